"""The owner's console in a real browser (Chromium driven by Playwright).

One seeded owner under uvicorn on SQLite (:mod:`tests.ui.seed`) serves the module. An
operator signs in, finds a device by serial, edits its labels, publishes a revision
(after two refused forms), starts, pauses and resumes a rollout, imports a voucher file,
reads the audit entry of each and signs out; a viewer sees no button it cannot use
and a forged POST is refused; an admin makes and revokes a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="the console's browser tests need the playwright package")

from playwright.sync_api import Browser, FilePayload, Page, expect  # noqa: E402

from fdo.voucher import vouchers_to_pem
from fdo_server.auth import Role
from tests.conftest import KeyPool
from tests.owner.helpers import make_world
from tests.ui.conftest import new_page
from tests.ui.seed import IMAGE2, SeededOwner, seeded_owner


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def voucher_pem(world_dir: Path, key_pool: KeyPool) -> tuple[bytes, dict[str, object]]:
    world = make_world(key_pool, world_dir)
    _, voucher = world.device()
    return vouchers_to_pem([voucher]).encode(), dict(world.owner_keys)


@pytest.fixture(scope="module")
def owner(world_dir: Path, voucher_pem: tuple[bytes, dict[str, object]]) -> Iterator[SeededOwner]:
    keys = voucher_pem[1]
    with seeded_owner(world_dir, f"sqlite:///{world_dir / 'owner.db'}", keys) as served:  # type: ignore[arg-type]
        yield served


def sign_in(page: Page, owner: SeededOwner, role: Role) -> None:
    page.goto(owner.url + "/ui")
    page.fill('input[name="token"]', owner.tokens[role])
    page.click('button:has-text("Sign in")')
    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator("header .who")).to_have_text(f"console-{role}")


def audit_entry(page: Page, action: str) -> str:
    """The newest audit entry of ``action``, found with the audit page's filter."""
    page.click('nav >> text="Audit"')
    page.select_option('select[name="action"]', action)
    page.click('form.filters button:has-text("Show")')
    row = page.locator("table.audit tr").nth(1)
    expect(row).to_contain_text(action)
    return row.inner_text()


def test_an_operator_does_the_job_and_every_change_is_audited(
    browser: Browser, owner: SeededOwner, voucher_pem: tuple[bytes, object], pages: list[Page]
) -> None:
    page = new_page(browser, pages)
    sign_in(page, owner, Role.OPERATOR)
    expect(page.locator('nav >> text="Tokens"')).to_have_count(0)  # admins only
    expect(page.locator(".card", has_text="onboarded")).to_contain_text("12")
    expect(page.locator("#overdue ~ table")).to_contain_text("KIOSK-0011")

    # Find a device by its serial and edit its labels.
    page.click('nav >> text="Devices"')
    page.fill('input[name="q"]', "KIOSK-0003")
    page.click('form.filters button:has-text("Show")')
    expect(page.locator(".total")).to_contain_text("1 device(s)")
    page.click('table a[href^="/ui/devices/"]')
    expect(page.locator("h1")).to_have_text("Device KIOSK-0003")
    expect(page.locator("table.facts").first).to_contain_text(owner.devices["KIOSK-0003"][:8])
    page.fill('textarea[name="labels"]', "site=berlin\nrack=r7")
    page.click('button:has-text("Save labels")')
    expect(page.locator(".note")).to_have_text("Labels saved.")
    expect(page.locator(".badge", has_text="rack=r7")).to_be_visible()

    # Publish a revision: a tag instead of a digest and bad JSON are refused in words.
    page.click('nav >> text="Groups"')
    page.click('table a[href="/ui/groups/kiosk"]')
    page.fill('#publish input[name="image"]', "registry.example.com/fleet/kiosk-os:latest")
    page.click('#publish button:has-text("Publish")')
    expect(page.locator(".note.bad")).to_contain_text("image")
    page.fill('#publish input[name="image"]', IMAGE2)
    page.fill('#publish textarea[name="config"]', "{not json")
    page.click('#publish button:has-text("Publish")')
    expect(page.locator(".note.bad")).to_contain_text("config: not JSON (line 1, column 2")
    page.fill('#publish textarea[name="config"]', "{}")
    page.click('#publish button:has-text("Publish")')
    expect(page.locator(".note")).to_have_text("Revision published.")
    expect(page.locator("table tr", has_text="kiosk-os@sha256:").first).to_contain_text("2")

    # Start, pause and resume a rollout of it.
    page.select_option('#start-rollout select[name="revision"]', "2")
    page.fill('#start-rollout input[name="batch_size"]', "4")
    page.click('#start-rollout button:has-text("Start rollout")')
    expect(page.locator(".note")).to_have_text("Rollout started.")
    rollout = page.url.split("?")[0]
    expect(page.locator("td.state")).to_contain_text("running")
    page.click('button:has-text("Pause")')
    expect(page.locator(".note")).to_have_text("Rollout paused.")
    expect(page.locator("td.state")).to_contain_text("paused")
    page.click('button:has-text("Resume")')
    expect(page.locator(".note")).to_have_text("Rollout resumed.")
    expect(page.locator("td.state")).to_contain_text("running")

    # Import a voucher file.
    page.click('nav >> text="Vouchers"')
    pem = voucher_pem[0]
    upload: FilePayload = {"name": "device.pem", "mimeType": "text/plain", "buffer": pem}
    page.set_input_files('input[name="file"]', files=[upload])
    page.click('#import button:has-text("Import")')
    expect(page.locator("table.results")).to_contain_text("imported")
    guid = re.search(r'data-copy="([0-9a-f-]+)"', page.locator("table.results").inner_html())
    assert guid is not None

    # Each change has its audit entry, by this operator.
    rollout_id = rollout.rsplit("/", 1)[1]
    for action, wanted in (
        ("device.labels", "rack"),
        ("revision.publish", "kiosk"),
        ("rollout.start", f"rollout:{rollout_id}"),
        ("rollout.pause", f"rollout:{rollout_id}"),
        ("rollout.resume", f"rollout:{rollout_id}"),
        ("voucher.import", guid.group(1)[:8]),
    ):
        entry = audit_entry(page, action)
        assert "console-operator" in entry and wanted in entry, (action, entry)

    page.click('button:has-text("Sign out")')
    expect(page.locator('input[name="token"]')).to_be_visible()
    page.goto(rollout)
    expect(page.locator('input[name="token"]')).to_be_visible()


def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(
    browser: Browser, owner: SeededOwner, pages: list[Page]
) -> None:
    page = new_page(browser, pages)
    sign_in(page, owner, Role.VIEWER)
    guid = owner.devices["KIOSK-0005"]
    paths = ["/ui", "/ui/devices", f"/ui/devices/{guid}", "/ui/groups", "/ui/groups/kiosk", "/ui/rollouts"]
    page.goto(owner.url + "/ui/rollouts")
    paths += [a.get_attribute("href") or "" for a in page.locator('table a[href^="/ui/rollouts/"]').all()[:1]]
    paths += ["/ui/vouchers", "/ui/audit"]
    for path in paths:
        page.goto(owner.url + path)
        # The only form that posts is signing out.
        expect(page.locator('form[method="post"]')).to_have_count(1)
        expect(page.locator("textarea, input[type=file]")).to_have_count(0)
    page.goto(owner.url + "/ui/tokens")
    expect(page.locator(".note.bad")).to_contain_text("Tokens need the admin role")

    # A forged form with the viewer's own CSRF token is refused, and nothing changes.
    page.goto(owner.url + f"/ui/devices/{guid}")
    csrf = page.locator('form[action="/ui/logout"] input[name="csrf"]').get_attribute("value") or ""
    forged = page.request.post(
        owner.url + f"/ui/devices/{guid}/labels", form={"labels": "owned=yes", "csrf": csrf}, max_redirects=0
    )
    assert forged.status == 403 and "This needs the operator role" in forged.text()
    no_csrf = page.request.post(owner.url + "/ui/rollouts/1/abort", form={}, max_redirects=0)
    assert no_csrf.status == 403
    viewer = {"Authorization": f"Bearer {owner.tokens[Role.VIEWER]}"}
    device = httpx.get(owner.url + f"/api/v1/devices/{guid}", headers=viewer, timeout=30).json()
    assert "owned" not in device["labels"]


def test_an_admin_makes_and_revokes_a_token(browser: Browser, owner: SeededOwner, pages: list[Page]) -> None:
    page = new_page(browser, pages)
    sign_in(page, owner, Role.ADMIN)
    page.click('nav >> text="Tokens"')
    page.fill('#new-token input[name="name"]', "night-shift")
    page.select_option('#new-token select[name="role"]', "viewer")
    page.click('#new-token button:has-text("Create token")')
    value = page.locator(".secret").inner_text().strip()
    assert value.startswith("fdo_")
    assert (
        httpx.get(owner.url + "/api/v1/summary", headers={"Authorization": f"Bearer {value}"}).status_code
        == 200
    )
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="night-shift").locator('button:has-text("Revoke")').click()
    expect(page.locator(".note")).to_have_text("Token revoked.")
    assert (
        httpx.get(owner.url + "/api/v1/summary", headers={"Authorization": f"Bearer {value}"}).status_code
        == 401
    )
    assert "token.revoke" in audit_entry(page, "token.revoke")
