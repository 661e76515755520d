"""Presence of federated contacts and profile lookup of remote users (docs/federation.md,
"Federated DMs, guests and presence").

A user's presence travels to the servers of the people they share a DM with; there it reaches
the local side of those DMs over the gateway, under the local id of the remote user, and the
profile lookup reports the last state heard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection

from tests.e2e.helpers import gateway
from tests.federation.pair import A, B, account, b_database, error_of, start_pair, stop

__all__ = ["b_database"]

DELIVERY_S = 20.0


async def presence_of(ws: WebSocketConnection, user_id: str, status: str) -> dict[str, Any]:
    """The next presence_update about ``user_id`` with ``status`` (others are skipped)."""
    with trio.fail_after(DELIVERY_S):
        while True:
            frame = json.loads(await ws.get_message())
            d: dict[str, Any] = frame["d"]
            if frame["type"] == "presence_update" and d["user_id"] == user_id and d["status"] == status:
                return d


async def test_presence_of_federated_contacts(
    nursery: trio.Nursery, tmp_path: Path, b_database: dict[str, Any]
) -> None:
    a, b = await start_pair(nursery, tmp_path, b=b_database)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        await account(b, cb, "dave")  # no DM with anyone on a.test: never relayed
        bob_here = await alice.ok("GET", "/federation/profiles/bob@b.test")
        assert bob_here["presence"] == {"user_id": bob_here["id"], "status": "offline", "activity": None}

        dm = await alice.ok("POST", "/dms", {"recipients": ["bob@b.test"]}, 201)
        async with gateway(a.daemon, alice.token) as (alice_ws, _):
            await alice.ok("POST", f"/channels/{dm['id']}/messages", {"content": "are you there?"}, 201)
            # b.test learns of the DM from the relay; wait until bob has it.
            with trio.fail_after(DELIVERY_S):
                while not await bob.ok("GET", "/dms"):
                    await trio.sleep(0.1)

            async with gateway(b.daemon, bob.token) as (bob_ws, _):
                online = await presence_of(alice_ws, bob_here["id"], "online")
                assert online == {"user_id": bob_here["id"], "status": "online", "activity": None}
                profile = await alice.ok("GET", "/federation/profiles/bob@b.test")
                assert profile["presence"]["status"] == "online"

                # A status change and a rich presence travel too.
                await bob_ws.send_message(json.dumps({"type": "set_status", "d": {"status": "busy"}}))
                busy = await presence_of(alice_ws, bob_here["id"], "busy")
                assert busy["activity"] is None
                activity = {"type": "playing", "name": "chess"}
                await bob_ws.send_message(json.dumps({"type": "set_activity", "d": {"activity": activity}}))
                with trio.fail_after(DELIVERY_S):
                    while True:
                        frame = json.loads(await alice_ws.get_message())
                        if frame["type"] == "rich_presence_update":
                            break
                assert frame["d"]["user_id"] == bob_here["id"]
                assert frame["d"]["activity"]["name"] == "chess"

                # Alice's own presence reached b.test as well, under b.test's id for her.
                alice_there = await bob.ok("GET", "/federation/profiles/alice@a.test")
                assert alice_there["presence"]["status"] == "online"

            offline = await presence_of(alice_ws, bob_here["id"], "offline")
            assert offline["activity"] is None
    await stop(a, b)


async def test_profile_lookup(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = await start_pair(nursery, tmp_path)
    async with a.http() as ca, b.http() as cb:
        alice = await account(a, ca, "alice")
        bob = await account(b, cb, "bob")
        await bob.ok("PATCH", "/users/@me", {"display_name": "Bob B."})
        first = await alice.ok("GET", "/federation/profiles/Bob@B.test")
        assert first["username"] == "bob@b.test" and first["display_name"] == "Bob B."
        # A later change at home shows in the next lookup, under the same local id.
        await bob.ok("PATCH", "/users/@me", {"display_name": "Robert"})
        second = await alice.ok("GET", "/federation/profiles/bob@b.test")
        assert second["id"] == first["id"] and second["display_name"] == "Robert"
        assert (await alice.ok("GET", f"/users/{first['id']}"))["username"] == "bob@b.test"
        # A user of this server by address, and malformed addresses.
        own = await alice.ok("GET", "/federation/profiles/alice@a.test")
        assert own["id"] == alice.id and own["home_domain"] is None and own["is_admin"] is True
        for bad in ("bob", "bob@", "b@b.test", "bob@B..test"):
            response = await alice.call("GET", f"/federation/profiles/{bad}")
            assert response.status_code == 400 and error_of(response)["code"] == "validation_error", bad
        unauthenticated = await ca.get("/api/v1/federation/profiles/bob@b.test")
        assert unauthenticated.status_code == 401

        # The home server answers peers only when the request is signed by one.
        unsigned = await cb.get("/api/v1/federation/users/bob")
        assert unsigned.status_code == 401 and error_of(unsigned)["code"] == "federation_unauthorized"
        stale = await cb.get(
            "/api/v1/federation/users/bob",
            headers={
                "Vox-Origin": A,
                "Vox-Destination": B,
                "Vox-Timestamp": str(int(time.time() * 1000) - 600_000),
                "Vox-Signature": "A" * 86,
            },
        )
        assert stale.status_code == 401 and error_of(stale)["reason"] in ("stale", "bad_signature")
    await stop(a, b)
