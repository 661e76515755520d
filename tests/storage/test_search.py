"""Full-text search: plaintext, live messages are found; encrypted and deleted ones never are."""

from __future__ import annotations

from tests.storage.helpers import NOW, add_guild_with_channel, add_message, add_user
from vox.storage import Conn, Engine


def search(conn: Conn, guild_id: str, query: str) -> list[str]:
    """The query each dialect's 0002 migration documents."""
    if conn.dialect == "sqlite":
        quoted = " ".join('"' + term.replace('"', '""') + '"' for term in query.split())
        rows = conn.fetchall(
            "SELECT m.id FROM messages_fts AS f"
            " JOIN messages_fts_ids AS i ON i.seq = f.rowid"
            " JOIN messages AS m ON m.id = i.message_id"
            " WHERE messages_fts MATCH :query AND m.guild_id = :guild_id"
            " ORDER BY f.rank",
            {"query": quoted, "guild_id": guild_id},
        )
    else:
        rows = conn.fetchall(
            "SELECT m.id FROM messages AS m"
            " WHERE m.search_vector @@ websearch_to_tsquery('simple', :query)"
            " AND m.guild_id = :guild_id"
            " ORDER BY ts_rank(m.search_vector, websearch_to_tsquery('simple', :query)) DESC",
            {"query": query, "guild_id": guild_id},
        )
    return [r["id"] for r in rows]


def check_index(conn: Conn) -> None:
    if conn.dialect == "sqlite":
        # Raises if the external-content index disagrees with the text it claims to hold.
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


async def setup(engine: Engine) -> tuple[str, str, str]:
    def fn(conn: Conn) -> tuple[str, str, str]:
        user_id = add_user(conn, "searcher")
        guild_id, channel_id = add_guild_with_channel(conn, user_id)
        return user_id, guild_id, channel_id

    return await engine.write(fn)


async def test_plaintext_found_encrypted_not(engine: Engine) -> None:
    user_id, guild_id, channel_id = await setup(engine)

    def fn(conn: Conn) -> tuple[str, str]:
        plain = add_message(conn, channel_id, guild_id, user_id, "Raid tonight at the Dragon Keep")
        secret = add_message(conn, channel_id, guild_id, user_id, "dragon keep raid", encrypted=True)
        return plain, secret

    plain, secret = await engine.write(fn)

    assert await engine.read(lambda c: search(c, guild_id, "dragon")) == [plain]
    assert await engine.read(lambda c: search(c, guild_id, "RAID keep")) == [plain]
    assert await engine.read(lambda c: search(c, guild_id, "nothing")) == []
    await engine.write(check_index)
    assert secret not in await engine.read(lambda c: search(c, guild_id, "raid"))


async def test_edits_deletes_and_encryption_update_the_index(engine: Engine) -> None:
    user_id, guild_id, channel_id = await setup(engine)
    ids = await engine.write(
        lambda c: [add_message(c, channel_id, guild_id, user_id, f"apple banana number{i}") for i in range(4)]
    )
    edited, soft_deleted, turned_secret, hard_deleted = ids

    def change(conn: Conn) -> None:
        conn.execute(
            "UPDATE messages SET content = 'cherry pie', edited_at = :now WHERE id = :id",
            {"id": edited, "now": NOW},
        )
        conn.execute("UPDATE messages SET deleted_at = :now WHERE id = :id", {"id": soft_deleted, "now": NOW})
        conn.execute("UPDATE messages SET encrypted = TRUE WHERE id = :id", {"id": turned_secret})
        conn.execute("DELETE FROM messages WHERE id = :id", {"id": hard_deleted})

    await engine.write(change)

    assert await engine.read(lambda c: search(c, guild_id, "apple")) == []
    assert await engine.read(lambda c: search(c, guild_id, "cherry")) == [edited]
    await engine.write(check_index)

    # Undeleting puts a message back.
    await engine.write(
        lambda c: c.execute("UPDATE messages SET deleted_at = NULL WHERE id = :id", {"id": soft_deleted})
    )
    assert await engine.read(lambda c: search(c, guild_id, "number1")) == [soft_deleted]


async def test_deleting_a_channel_empties_its_part_of_the_index(engine: Engine) -> None:
    user_id, guild_id, channel_id = await setup(engine)
    await engine.write(lambda c: add_message(c, channel_id, guild_id, user_id, "ephemeral words"))

    await engine.write(lambda c: c.execute("DELETE FROM channels WHERE id = :id", {"id": channel_id}))

    assert await engine.read(lambda c: search(c, guild_id, "ephemeral")) == []
    if engine.dialect == "sqlite":
        assert await engine.read(lambda c: c.fetchval("SELECT COUNT(*) FROM messages_fts_ids")) == 0
    await engine.write(check_index)


async def test_search_is_scoped_by_guild(engine: Engine) -> None:
    user_id, guild_id, channel_id = await setup(engine)

    def other(conn: Conn) -> str:
        other_guild, other_channel = add_guild_with_channel(conn, user_id)
        add_message(conn, other_channel, other_guild, user_id, "shared word")
        add_message(conn, channel_id, guild_id, user_id, "shared word")
        return other_guild

    other_guild = await engine.write(other)
    assert len(await engine.read(lambda c: search(c, guild_id, "shared"))) == 1
    assert len(await engine.read(lambda c: search(c, other_guild, "shared"))) == 1
