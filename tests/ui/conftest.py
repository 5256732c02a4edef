"""Browser tests of the owner's console: Playwright (Python) driving the system Chromium.

The browser is Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs
it); the tests skip, saying why, when the ``playwright`` package or a Chromium cannot be
had. When a test fails, screenshots are written to ``$FDO_UI_SCREENSHOTS`` (default
``ui-screenshots/`` in the working directory), named after the test: each open page as
it was at the failure, then each page (URL) the test visited, loaded again in the same
browser context.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Page, Playwright, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

#: At most this many visited pages are screenshotted again after a failure.
MAX_VISITED = 30
SHOTS = Path(os.environ.get("FDO_UI_SCREENSHOTS", "ui-screenshots"))


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if sync_playwright is None:
        pytest.skip("the console's browser tests need the playwright package (pip install -e '.[test]')")
    if chromium_path() is None:
        pytest.skip("the console's browser tests need Chromium: apt-get install chromium")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    yield launched
    launched.close()


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[list[Page]]:
    """A factory list: ``new_page(pages)`` opens a page in a fresh browser context; on
    failure each open page is screenshotted into :data:`SHOTS`."""
    opened: list[Page] = []
    yield opened
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        SHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        for number, page in enumerate(opened):
            if page.is_closed():
                continue
            path = SHOTS / f"{name}-{number}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"screenshot of {page.url} at the failure: {path}")
            visited: list[str] = list(dict.fromkeys(getattr(page, "visited", [])))
            again = page.context.new_page()
            for step, url in enumerate(visited[:MAX_VISITED]):
                path = SHOTS / f"{name}-{number}-{step:02}.png"
                try:
                    again.goto(url)
                    again.screenshot(path=str(path), full_page=True)
                    print(f"screenshot of {url}: {path}")
                except PlaywrightError as exc:
                    print(f"no screenshot of {url}: {exc}")
    for page in opened:
        page.context.close()


def new_page(browser: Browser, pages: list[Page]) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url) if frame == page.main_frame else None)
    page.visited = visited  # type: ignore[attr-defined]
    pages.append(page)
    return page
