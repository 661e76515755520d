"""The federation outbox and inbox record on both engines: ordered heads, exclusive leases
on whole batches, retry bookkeeping, dedup."""

from __future__ import annotations

from vox.storage import Engine
from vox.storage.federation import FederationStore, OutboxRow

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


LIMITS = {"limit": 100, "max_bytes": 1 << 20}


async def claim_one(store: FederationStore, owner: str, now: int) -> OutboxRow | None:
    batch = await store.claim_batch("b.test", owner, now, LEASE, limit=1, max_bytes=1 << 20)
    return batch[0] if batch else None


async def test_one_owner_holds_a_destination_and_rows_come_in_order(engine: Engine) -> None:
    store = FederationStore(engine)
    ids = [await store.enqueue("b.test", "ping", f'{{"n":{n}}}', 1000 + n) for n in range(3)]
    row = await claim_one(store, "one", 2000)
    assert row is not None and row.id == ids[0] and row.payload == '{"n":0}'
    # Someone else cannot take the destination while the lease runs, even a later row.
    assert await claim_one(store, "two", 2001) is None
    assert await store.delivered("b.test", row.id, row.id, "one") == 1
    row = await claim_one(store, "two", 2002)
    assert row is not None and row.id == ids[1]
    # A lease that ran out is taken over (the owner died mid-delivery).
    taken = await claim_one(store, "one", 2002 + LEASE + 1)
    assert taken is not None and taken.id == ids[1]
    # The old owner's late acknowledgement no longer counts.
    assert await store.delivered("b.test", ids[1], ids[1], "two") == 0
    assert await store.pending("b.test") == 2


async def test_a_batch_is_the_head_and_the_rows_behind_it_leased_together(engine: Engine) -> None:
    store = FederationStore(engine)
    ids = [await store.enqueue("b.test", "ping", f'{{"n":{n}}}', 1000 + n) for n in range(5)]
    other = await store.enqueue("c.test", "ping", "{}", 1005)
    batch = await store.claim_batch("b.test", "one", 2000, LEASE, limit=3, max_bytes=1 << 20)
    assert [r.id for r in batch] == ids[:3]
    # The whole batch is held: another daemon gets nothing of this destination, other ones still.
    assert await store.claim_batch("b.test", "two", 2001, LEASE, **LIMITS) == []
    assert [r.id for r in await store.claim_batch("c.test", "two", 2001, LEASE, **LIMITS)] == [other]
    # Two of three acknowledged: exactly those go, in one statement; the third is still ours.
    assert await store.delivered("b.test", ids[0], ids[1], "one") == 2
    assert await store.claim_batch("b.test", "two", 2002, LEASE, **LIMITS) == []
    again = await store.claim_batch("b.test", "one", 2002, LEASE, **LIMITS)
    assert [r.id for r in again] == ids[2:]


async def test_a_batch_stops_at_the_byte_cap_but_always_holds_the_head(engine: Engine) -> None:
    store = FederationStore(engine)
    big = '{"x":"' + "a" * 100 + '"}'
    ids = [await store.enqueue("b.test", "ping", big, 1000 + n) for n in range(4)]
    size = len("ping") + len(big)
    batch = await store.claim_batch("b.test", "me", 2000, LEASE, limit=100, max_bytes=2 * size + 1)
    assert [r.id for r in batch] == ids[:2]
    await store.release("b.test", "me")
    alone = await store.claim_batch("b.test", "me", 2000, LEASE, limit=100, max_bytes=1)
    assert [r.id for r in alone] == ids[:1]


async def test_a_failed_head_waits_and_counts_attempts(engine: Engine) -> None:
    store = FederationStore(engine)
    row_id = await store.enqueue("b.test", "ping", "{}", 1000)
    behind = await store.enqueue("b.test", "ping", "{}", 1001)
    batch = await store.claim_batch("b.test", "me", 1000, LEASE, **LIMITS)
    assert [r.id for r in batch] == [row_id, behind] and batch[0].attempts == 0
    assert await store.failed("b.test", row_id, "me", 5000, "peer answered 503 unknown") == 1
    # Every lease of the batch was given back, but the head is not due yet: nobody takes it.
    assert await store.claim_batch("b.test", "other", 4999, LEASE, **LIMITS) == []
    again = await store.claim_batch("b.test", "other", 5000, LEASE, **LIMITS)
    assert [r.id for r in again] == [row_id, behind] and again[0].attempts == 1
    head = (await store.heads())[0]
    assert head.next_attempt_at == 5000 and head.created_at == 1000


async def test_ids_are_never_reused(engine: Engine) -> None:
    store = FederationStore(engine)
    first = await store.enqueue("b.test", "ping", "{}", 1)
    row = await claim_one(store, "me", 1)
    assert row is not None
    await store.delivered("b.test", first, first, "me")
    assert await store.pending("b.test") == 0
    assert await store.enqueue("b.test", "ping", "{}", 2) > first


async def test_inbox_remembers_deliveries_until_pruned(engine: Engine) -> None:
    store = FederationStore(engine)
    assert await store.seen("a.test", [7]) == set()
    await store.mark_seen("a.test", [7, 8], 1000)
    await store.mark_seen("a.test", [7], 1001)  # a second record of the same delivery is harmless
    assert await store.seen("a.test", [6, 7, 8]) == {7, 8}
    assert await store.seen("c.test", [7]) == set()
    assert await store.prune_seen(1000) == 0
    assert await store.prune_seen(1001) == 2
    assert await store.seen("a.test", [7, 8]) == set()
