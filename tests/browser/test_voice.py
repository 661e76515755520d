"""Voice in the browser: two Chromium pages with fake microphones join one voice channel through
the SFU, and each page's WebRTC stats show audio from the other arriving; mute and screen share
reach the other side."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.client import (
    Page,
    close,
    create_guild,
    expect,
    invite_code,
    join_guild,
    open_page,
    register,
)
from tests.browser.conftest import Server


def inbound_bytes(page: Page) -> int:
    return int(page.locator(".voice-stats").get_attribute("data-inbound-audio-bytes") or 0)


def wait_inbound_above(page: Page, floor: int, timeout: float = 20_000) -> None:
    page.wait_for_function(
        "floor => Number(document.querySelector('.voice-stats')?.dataset.inboundAudioBytes || 0) > floor",
        arg=floor,
        timeout=timeout,
    )


def test_two_people_talk_in_a_voice_channel(server: Server, browser: Any) -> None:
    carol = open_page(browser, server)
    dave = open_page(browser, server)
    try:
        register(carol, "carol")
        create_guild(carol, "Voice Lab")
        code = invite_code(carol)
        register(dave, "dave")
        join_guild(dave, code)

        for page in (carol, dave):
            page.get_by_role("button", name="Join voice General").click()
        for page in (carol, dave):
            expect(page.locator(".voice-state")).to_have_attribute("data-state", "connected", timeout=20_000)
            expect(page.locator(".voice-participants .participant")).to_have_count(2)

        # Audio from the other side keeps arriving at both pages.
        for page in (carol, dave):
            wait_inbound_above(page, 2_000)
            wait_inbound_above(page, inbound_bytes(page) + 2_000)

        # The fake microphone beeps: the other page shows who is speaking.
        expect(carol.locator(".voice-participants .participant.speaking", has_text="dave")).to_be_visible(
            timeout=10_000
        )

        # Mute shows on the other side.
        carol.get_by_role("button", name="Mute", exact=True).click()
        expect(carol.get_by_role("button", name="Unmute")).to_have_attribute("aria-pressed", "true")
        muted = dave.locator(".voice-participants .participant", has_text="carol")
        expect(muted.locator(".muted-icon")).to_be_visible()
        carol.get_by_role("button", name="Unmute").click()
        expect(muted.locator(".muted-icon")).to_have_count(0)

        # Screen share: the other page shows the sharer's screen, with frames decoding.
        carol.get_by_role("button", name="Share screen").click()
        expect(carol.get_by_role("button", name="Stop sharing")).to_be_visible()
        expect(dave.get_by_label("carol's screen")).to_be_visible(timeout=20_000)
        dave.wait_for_function(
            """label => {
                const v = [...document.querySelectorAll(".stage video")].find(
                    (x) => x.getAttribute("aria-label") === label);
                return v !== undefined && v.videoWidth > 0 && v.currentTime > 0;
            }""",
            arg="carol's screen",
            timeout=20_000,
        )
        carol.get_by_role("button", name="Stop sharing").click()
        expect(dave.get_by_label("carol's screen")).to_have_count(0)

        # Leaving: the other page sees one participant left.
        dave.get_by_role("button", name="Leave", exact=True).click()
        expect(dave.locator(".voice-panel")).to_be_hidden()
        expect(carol.locator(".voice-participants .participant")).to_have_count(1)
        expect(carol.locator(".voice-participants")).not_to_contain_text(re.compile("dave"))
        carol.get_by_role("button", name="Leave", exact=True).click()
        expect(carol.locator(".voice-panel")).to_be_hidden()

        # A DM call: carol rings dave from the member list's DM, dave accepts, audio flows.
        carol.get_by_role("button", name="Message dave").click()
        expect(carol.locator("#channel-title")).to_have_text("@ dave")
        carol.get_by_role("button", name="Start a voice call").click()
        banner = dave.locator(".call-banner")
        expect(banner).to_contain_text("carol is calling you")
        banner.get_by_role("button", name="Accept").click()
        expect(dave.locator("#channel-title")).to_have_text("@ carol")
        for page in (carol, dave):
            expect(page.locator(".voice-state")).to_have_attribute("data-state", "connected", timeout=20_000)
            wait_inbound_above(page, 2_000)
        # The call lives while anyone is in it; the last one hanging up ends it.
        carol.get_by_role("button", name="Hang up").click()
        expect(carol.locator(".voice-panel")).to_be_hidden()
        expect(dave.locator(".voice-participants .participant")).to_have_count(1)
        expect(carol.get_by_role("button", name="Join call")).to_be_visible()
        dave.get_by_role("button", name="Hang up").click()
        expect(dave.locator(".voice-panel")).to_be_hidden()
        for page in (carol, dave):
            expect(page.get_by_role("button", name="Start a voice call")).to_be_visible()
    finally:
        close(carol, dave)
