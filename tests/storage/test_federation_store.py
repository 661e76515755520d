"""The federation outbox and inbox record on both engines: ordered heads, exclusive leases,
retry bookkeeping, dedup."""

from __future__ import annotations

from vox.storage import Engine
from vox.storage.federation import FederationStore

LEASE = 10_000


async def test_heads_are_the_oldest_row_of_each_destination(engine: Engine) -> None:
    store = FederationStore(engine)
    first_b = await store.enqueue("b.test", "ping", '{"n":1}', 1000)
    await store.enqueue("b.test", "ping", '{"n":2}', 1001)
    first_c = await store.enqueue("c.test", "ping", '{"n":3}', 1002)
    assert first_c > first_b
    heads = {h.destination: h for h in await store.heads()}
    assert set(heads) == {"b.test", "c.test"}
    assert (heads["b.test"].id, heads["b.test"].pending) == (first_b, 2)
    assert (heads["c.test"].id, heads["c.test"].pending) == (first_c, 1)


async def test_one_owner_holds_a_destination_and_rows_come_in_order(engine: Engine) -> None:
    store = FederationStore(engine)
    ids = [await store.enqueue("b.test", "ping", f'{{"n":{n}}}', 1000 + n) for n in range(3)]
    row = await store.claim_head("b.test", "one", 2000, LEASE)
    assert row is not None and row.id == ids[0] and row.payload == '{"n":0}'
    # Someone else cannot take the destination while the lease runs, even a later row.
    assert await store.claim_head("b.test", "two", 2001, LEASE) is None
    await store.delivered(row.id, "one")
    row = await store.claim_head("b.test", "two", 2002, LEASE)
    assert row is not None and row.id == ids[1]
    # A lease that ran out is taken over (the owner died mid-delivery).
    taken = await store.claim_head("b.test", "one", 2002 + LEASE + 1, LEASE)
    assert taken is not None and taken.id == ids[1]
    # The old owner's late acknowledgement no longer counts.
    await store.delivered(ids[1], "two")
    assert await store.pending("b.test") == 2


async def test_a_failed_head_waits_and_counts_attempts(engine: Engine) -> None:
    store = FederationStore(engine)
    row_id = await store.enqueue("b.test", "ping", "{}", 1000)
    row = await store.claim_head("b.test", "me", 1000, LEASE)
    assert row is not None and row.attempts == 0
    assert await store.failed(row_id, "me", 5000, "peer answered 503 unknown") == 1
    assert await store.claim_head("b.test", "me", 4999, LEASE) is None
    again = await store.claim_head("b.test", "me", 5000, LEASE)
    assert again is not None and again.id == row_id and again.attempts == 1
    (head,) = await store.heads()
    assert head.next_attempt_at == 5000


async def test_ids_are_never_reused(engine: Engine) -> None:
    store = FederationStore(engine)
    first = await store.enqueue("b.test", "ping", "{}", 1)
    row = await store.claim_head("b.test", "me", 1, LEASE)
    assert row is not None
    await store.delivered(first, "me")
    assert await store.pending("b.test") == 0
    assert await store.enqueue("b.test", "ping", "{}", 2) > first


async def test_inbox_remembers_deliveries_until_pruned(engine: Engine) -> None:
    store = FederationStore(engine)
    assert not await store.seen("a.test", 7)
    await store.mark_seen("a.test", 7, 1000)
    await store.mark_seen("a.test", 7, 1001)  # a second record of the same delivery is harmless
    assert await store.seen("a.test", 7)
    assert not await store.seen("c.test", 7)
    assert await store.prune_seen(1000) == 0
    assert await store.prune_seen(1001) == 1
    assert not await store.seen("a.test", 7)
