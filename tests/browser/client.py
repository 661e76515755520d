"""Steps a person takes in the web client, as Playwright actions on one page."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import Server, require_browser

require_browser(module_level=True)

try:
    from playwright.sync_api import Page, expect
except ImportError:  # only under CI, where every test fails in the server fixture, saying why
    Page = Any
    expect = None

PASSWORD = "correct horse battery"
# Script errors and console errors per page (by id), checked when a test closes its pages.
PROBLEMS: dict[int, list[str]] = {}


def close(*pages: Page, allow: tuple[str, ...] = ()) -> None:
    """Close the pages' contexts; fail if any page had a script error or logged an error."""
    found: list[str] = []
    for page in pages:
        found += [p for p in PROBLEMS.pop(id(page), []) if not any(a in p for a in allow)]
        page.context.close()
    assert not found, found


def open_page(browser: Any, server: Server, *, width: int = 1280, height: int = 800) -> Page:
    context = browser.new_context(viewport={"width": width, "height": height}, permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    PROBLEMS[id(page)] = problems
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.goto(server.rest + "/")
    return page


def register(page: Page, username: str) -> None:
    page.get_by_role("button", name="Create an account").click()
    form = page.get_by_role("form", name="Create account")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_role("button", name="Create account").click()
    expect(page.locator(".connection")).to_have_attribute("data-state", "online")


def create_guild(page: Page, name: str) -> None:
    page.get_by_role("button", name="Create or join a server").click()
    page.get_by_label("Server name").fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#channel-title")).to_have_text("# general")


def invite_code(page: Page) -> str:
    page.get_by_role("button", name="Invite", exact=True).click()
    code = page.locator("output.invite-code")
    expect(code).to_have_text(re.compile(r"^[A-Za-z0-9]{10}$"))
    text = code.inner_text()
    page.locator("dialog").get_by_role("button", name="Close").click()
    return text


def join_guild(page: Page, code: str) -> None:
    page.get_by_role("button", name="Create or join a server").click()
    page.get_by_label("Invite code or link").fill(code)
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#channel-title")).to_have_text("# general")


def send(page: Page, text: str) -> None:
    box = page.locator("#composer-input")
    box.fill(text)
    box.press("Enter")


def message(page: Page, text: str) -> Any:
    return page.locator(".messages .message", has_text=text)
