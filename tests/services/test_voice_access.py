"""VoiceAccessWatch: which participants are re-checked after which broker events."""

from __future__ import annotations

import trio

from vox.pubsub.memory import MemoryBroker
from vox.services.guild_events import guild_topic, user_topic
from vox.services.publish import publish_event
from vox.services.voice_access import VoiceAccessWatch


async def test_watch_checks_the_affected_participants_once_per_burst() -> None:
    broker = MemoryBroker()
    rooms = {"g1": ["ann", "bob"], "g2": ["cat"]}
    checked: list[str] = []

    async def check(user_id: str) -> None:
        checked.append(user_id)

    watch = VoiceAccessWatch(
        broker, lambda g: rooms.get(g, []), lambda: [u for us in rooms.values() for u in us], check
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        for user, guild in (("ann", "g1"), ("bob", "g1"), ("cat", "g2")):
            await watch.track(user, guild)
        with trio.fail_after(5):
            while sorted(checked) != ["ann", "bob", "cat"]:  # the check after subscribing
                await trio.sleep(0.01)
        checked.clear()

        # Not a trigger: nobody is checked.
        await publish_event(broker, [guild_topic("g1")], "message_new", {})
        # A burst on g1's topic checks g1's participants once each; a user topic only that user.
        await publish_event(broker, [guild_topic("g1")], "role_update", {})
        await publish_event(broker, [guild_topic("g1")], "_guild_access", {})
        await publish_event(broker, [user_topic("cat")], "call_ended", {})
        with trio.fail_after(5):
            while len(checked) < 3:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert sorted(checked) == ["ann", "bob", "cat"]

        # Untracked topics stop reaching the watch; shared ones stay while someone holds them.
        checked.clear()
        await watch.untrack("bob", "g1")
        await watch.untrack("cat", "g2")
        await publish_event(broker, [user_topic("cat"), user_topic("bob")], "call_ended", {})
        await publish_event(broker, [guild_topic("g2")], "role_update", {})
        await publish_event(broker, [user_topic("ann")], "member_update", {})
        with trio.fail_after(5):
            while not checked:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert checked == ["ann"]
        nursery.cancel_scope.cancel()
