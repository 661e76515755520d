"""Two people chat in the web client: register, guild, invite, live messages both ways, mentions,
reactions, edits, typing, an image upload with its preview, search, presence and unread counts.
The run also refreshes the screenshots under docs/screenshots/."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

from tests.browser.client import (
    close,
    create_guild,
    expect,
    invite_code,
    join_guild,
    message,
    open_page,
    register,
    send,
)
from tests.browser.conftest import SCREENSHOTS, Server


def png(width: int = 96, height: int = 64) -> bytes:
    """A small gradient PNG, written by hand so the test needs no imaging library."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_two_people_chat(server: Server, browser: Any, tmp_path: Path) -> None:
    alice = open_page(browser, server)
    bob = open_page(browser, server)
    try:
        register(alice, "alice")
        create_guild(alice, "Night Raid")
        code = invite_code(alice)
        register(bob, "bob")
        join_guild(bob, code)

        # Live both ways; bob's "@alice" becomes a mention that alice sees highlighted.
        send(alice, "hello bob, ready for tonight?")
        expect(message(bob, "hello bob, ready for tonight?")).to_be_visible()
        bob.locator("#composer-input").press_sequentially("@alice yes")
        expect(alice.locator(".typing")).to_have_text("bob is typing…")
        bob.locator("#composer-input").press("Enter")
        mention = message(alice, "yes")
        expect(mention).to_have_class(re.compile(r"\bmentioned\b"))
        expect(mention.locator(".mention.self")).to_have_text("@alice")
        expect(alice.locator(".typing")).to_have_text("")

        # A reply, and a reaction that both see.
        message(alice, "yes").hover()
        message(alice, "yes").get_by_role("button", name="Reply").click()
        expect(alice.locator(".reply-bar")).to_contain_text("Replying to bob")
        send(alice, "great, bring snacks")
        expect(message(bob, "great, bring snacks").locator(".reply-context")).to_have_text("↪ bob @alice yes")
        target = message(bob, "hello bob, ready for tonight?")
        target.hover()
        target.get_by_role("button", name="Add reaction").click()
        bob.get_by_role("button", name="React 👍").click()
        expect(message(alice, "hello bob, ready for tonight?").locator(".reaction")).to_have_text("👍 1")
        expect(target.locator(".reaction")).to_have_attribute("aria-pressed", "true")

        # Editing one's last message with the up arrow.
        bob.locator("#composer-input").press("ArrowUp")
        edit = bob.get_by_label("Edit message")
        edit.fill("@alice yes, see you at nine")
        edit.press("Enter")
        expect(message(alice, "see you at nine").locator(".edited")).to_be_visible()

        # An image upload: a progress bar while it goes, then a preview on both sides.
        picture = tmp_path / "map.png"
        picture.write_bytes(png())
        alice.locator("#file-input").set_input_files(str(picture))
        for page in (alice, bob):
            preview = page.locator("img.preview[alt='map.png']")
            expect(preview).to_be_visible()
            expect(preview).to_have_js_property("naturalWidth", 96)

        # Presence: both online in the member list.
        expect(alice.locator(".side-panel .member.status-online")).to_have_count(2)

        # Search.
        alice.get_by_label("Search messages").fill("snacks")
        alice.get_by_label("Search messages").press("Enter")
        results = alice.locator(".search-results .result")
        expect(results).to_have_count(1)
        expect(results.first).to_contain_text("great, bring snacks")
        alice.get_by_role("button", name="Close search").click()
        expect(alice.get_by_role("complementary", name="Members")).to_be_visible()

        # Unread counts: bob is elsewhere when alice writes.
        bob.get_by_role("button", name="Home").click()
        send(alice, "anyone around?")
        expect(bob.locator(".guild-button[data-guild] .badge")).to_have_text("1")
        bob.locator(".guild-button", has_text="NR").click()
        expect(message(bob, "anyone around?")).to_be_visible()
        expect(bob.locator(".guild-button .badge")).to_have_count(0)

        # Deleting.
        own = message(alice, "anyone around?")
        own.hover()
        alice.once("dialog", lambda d: d.accept())
        own.get_by_role("button", name="Delete").click()
        expect(message(bob, "anyone around?")).to_have_count(0)

        # Friends and a DM: bob asks, alice accepts and writes; bob's new conversation is unread.
        bob.get_by_role("button", name="Home").click()
        bob.get_by_label("Add a friend by username").fill("alice")
        bob.get_by_role("button", name="Send request").click()
        expect(
            bob.locator(".friend-list", has_text="alice").get_by_role("button", name="Cancel")
        ).to_be_visible()
        alice.get_by_role("button", name="Home").click()
        alice.locator(".friend-list li", has_text="bob").get_by_role("button", name="Accept").click()
        alice.locator(".friend-list li", has_text="bob").get_by_role("button", name="Message").click()
        expect(alice.locator("#channel-title")).to_have_text("@ bob")
        send(alice, "psst, a direct message")
        dm = bob.locator(".channel[data-channel]", has_text="@ alice")
        expect(dm.locator(".badge")).to_have_text("1")
        dm.click()
        expect(message(bob, "psst, a direct message")).to_be_visible()
        alice.locator(".guild-button", has_text="NR").click()
        bob.locator(".guild-button", has_text="NR").click()
        expect(alice.locator("#channel-title")).to_have_text("# general")

        # A dropped gateway connection resumes and shows its state.
        bob.context.set_offline(True)
        expect(bob.locator(".connection")).not_to_have_attribute("data-state", "online", timeout=10_000)
        send(alice, "sent while bob was away")
        bob.context.set_offline(False)
        expect(bob.locator(".connection")).to_have_attribute("data-state", "online", timeout=15_000)
        expect(bob.locator(".connection")).to_have_attribute("data-resumes", "1")
        expect(message(bob, "sent while bob was away")).to_be_visible()

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        alice.get_by_label("Search messages").fill("")
        # A still picture: no passing notices, no focus ring, no hover.
        alice.evaluate("document.getElementById('toasts').replaceChildren(); document.activeElement.blur()")
        alice.mouse.move(0, 0)
        alice.screenshot(path=str(SCREENSHOTS / "chat-desktop.png"))
        alice.set_viewport_size({"width": 390, "height": 844})
        expect(alice.get_by_role("button", name="Show channels")).to_be_visible()
        alice.screenshot(path=str(SCREENSHOTS / "chat-phone.png"))
        alice.get_by_role("button", name="Show channels").click()
        expect(alice.locator(".sidebar")).to_be_visible()
    finally:
        # Reconnect attempts while offline log their failure; that is expected.
        close(alice, bob, allow=("ERR_INTERNET_DISCONNECTED",))


def test_tokens_are_refreshed_before_they_expire(server: Server, browser: Any) -> None:
    """The page's clock jumps past the access token's 15 minutes: the client has refreshed it by
    then (a rotated refresh token in sessionStorage), and keeps working."""
    page = open_page(browser, server)
    try:
        page.clock.install()
        page.reload()
        register(page, "erin")
        create_guild(page, "Clockwork")
        before = page.evaluate("JSON.parse(sessionStorage.getItem('vox.session')).refresh_token")
        page.clock.fast_forward("16:00")
        page.wait_for_function(
            "old => JSON.parse(sessionStorage.getItem('vox.session') || '{}').refresh_token !== old",
            arg=before,
            timeout=10_000,
        )
        send(page, "still here after the refresh")
        expect(message(page, "still here after the refresh")).to_be_visible()
        expect(page.locator(".connection")).to_have_attribute("data-state", "online")
    finally:
        close(page)
