"""Screenshots of the owner's console for docs/console.md, from a seeded owner.

    .venv/bin/python scripts/console_screenshots.py [OUT_DIR]   # default docs/console

Seeds an owner on a temporary SQLite database (:mod:`tests.ui.seed`: groups, a published
revision, twelve onboarded kiosks), publishes revision 2 and starts a rollout of it
through the admin API, lets two devices report it applied, then signs a Chromium
(the system one, driven by Playwright) in as the operator and writes 1280x800 PNGs of
the dashboard, the device list, a device, the group, the rollout and the audit log.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright  # noqa: E402
from sqlmodel import select  # noqa: E402

from fdo_server.auth import Role  # noqa: E402
from fdo_server.db import make_engine, unit_of_work  # noqa: E402
from owner.groups_tables import Device  # noqa: E402
from tests.conftest import KeyPool  # noqa: E402
from tests.ui.seed import DIGEST2, IMAGE2, SeededOwner, seeded_owner  # noqa: E402

PAGES = ("dashboard", "devices", "device", "group", "rollout", "audit")


def _rollout(owner: SeededOwner) -> int:
    operator = {"Authorization": f"Bearer {owner.tokens[Role.OPERATOR]}"}
    with httpx.Client(base_url=owner.url, headers=operator, timeout=30) as api:
        body = {"image": IMAGE2, "apply_mode": "switch-reboot", "config": {"kargs": ["quiet"]}}
        published = api.post("/api/v1/groups/kiosk/revisions", json=body)
        if published.status_code != 201:
            published = api.post("/api/v1/groups/kiosk/revisions", json={"image": IMAGE2})
        published.raise_for_status()
        started = api.post("/api/v1/groups/kiosk/rollouts", json={"revision": 2, "batch_size": 4})
        started.raise_for_status()
        rollout_id = int(started.json()["id"])
        devices = [str(d["guid"]) for d in started.json()["devices"] or [] if d["batch"] == 1][:2]
    engine = make_engine(owner.database_url)
    try:
        with unit_of_work(engine) as db:
            for guid in devices:
                row = next(d for d in db.exec(select(Device)).all() if d.guid.hex() == guid.replace("-", ""))
                row.held_revision, row.held_generation = 2, row.desired_generation
                row.applied_revision, row.apply_state, row.booted_digest = 2, "applied", DIGEST2
                db.add(row)
    finally:
        engine.dispose()
    with httpx.Client(base_url=owner.url, headers=operator, timeout=30) as api:
        api.post(f"/api/v1/rollouts/{rollout_id}/pause").raise_for_status()
        api.post(f"/api/v1/rollouts/{rollout_id}/resume").raise_for_status()
    return rollout_id


def main(out: Path) -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("console_screenshots: no chromium on the PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    pool = KeyPool()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = {"ec256": pool.get("ec256", 3), "ec384": pool.get("ec384", 3)}
        with seeded_owner(work, f"sqlite:///{work / 'owner.db'}", keys) as owner:
            rollout_id = _rollout(owner)
            time.sleep(0.5)
            device = owner.devices["KIOSK-0003"]
            urls = {
                "dashboard": "/ui",
                "devices": "/ui/devices?group=kiosk&sort=serial",
                "device": f"/ui/devices/{device}",
                "group": "/ui/groups/kiosk",
                "rollout": f"/ui/rollouts/{rollout_id}",
                "audit": "/ui/audit",
            }
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="UTC")
                page = context.new_page()
                page.goto(owner.url + "/ui")
                page.fill('input[name="token"]', owner.tokens[Role.OPERATOR])
                page.click('button:has-text("Sign in")')
                page.wait_for_selector("text=Devices by status")
                for name in PAGES:
                    page.goto(owner.url + urls[name])
                    page.screenshot(path=str(out / f"{name}.png"))
                    print(out / f"{name}.png")
                browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/console")))
