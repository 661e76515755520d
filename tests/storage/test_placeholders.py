"""``:name`` -> ``%(name)s`` translation for psycopg (no database needed)."""

from __future__ import annotations

import pytest

from vox.storage.postgres import describe_url, translate_placeholders


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT * FROM t WHERE id = :id", "SELECT * FROM t WHERE id = %(id)s"),
        ("VALUES (:a, :b_2, :_c)", "VALUES (%(a)s, %(b_2)s, %(_c)s)"),
        ("WHERE a = :x AND b = :x", "WHERE a = %(x)s AND b = %(x)s"),
        # casts are not placeholders, even right after one
        ("SELECT :v::bigint, x::text", "SELECT %(v)s::bigint, x::text"),
        ("SELECT ''::tsvector", "SELECT ''::tsvector"),
        # literal percent signs are doubled, wherever they are
        ("SELECT 5 % 3", "SELECT 5 %% 3"),
        ("WHERE name LIKE 'a%' || :q || '%'", "WHERE name LIKE 'a%%' || %(q)s || '%%'"),
        ("SELECT '%(x)s'", "SELECT '%%(x)s'"),
        # no placeholders inside strings, identifiers, comments or dollar quotes
        ("SELECT ':nope', :yes", "SELECT ':nope', %(yes)s"),
        ("SELECT 'it''s :nope'", "SELECT 'it''s :nope'"),
        ("SELECT E'it\\'s :nope', :yes", "SELECT E'it\\'s :nope', %(yes)s"),
        ('SELECT ":nope" FROM t', 'SELECT ":nope" FROM t'),
        ("SELECT 1 -- :nope 100%\n, :yes", "SELECT 1 -- :nope 100%%\n, %(yes)s"),
        ("SELECT /* :nope */ :yes", "SELECT /* :nope */ %(yes)s"),
        ("SELECT $$ :nope $$, :yes", "SELECT $$ :nope $$, %(yes)s"),
        ("SELECT $fn$ :nope $$ :still $fn$", "SELECT $fn$ :nope $$ :still $fn$"),
        # a colon that does not start a name is left alone
        ("SELECT a[1:2], ':' , : x", "SELECT a[1:2], ':' , : x"),
        ("SELECT :1", "SELECT :1"),
        # a name that merely ends in e before a quote is not an E'' string
        ("SELECT name':x'", "SELECT name':x'"),
    ],
)
def test_translate_placeholders(sql: str, expected: str) -> None:
    assert translate_placeholders(sql) == expected


def test_describe_url_never_shows_the_password() -> None:
    text = describe_url(
        "postgresql://vox:hunter2@db.example:6432/voxdb?options=-csearch_path%3Ds&sslmode=require"
    )
    assert "hunter2" not in text
    assert "search_path" not in text
    assert text == "postgres (vox@db.example:6432/voxdb)"
    assert "s3cret" not in describe_url("host=db password=s3cret dbname=vox")
    assert describe_url("postgres://127.0.0.1/test") == "postgres (127.0.0.1/test)"
