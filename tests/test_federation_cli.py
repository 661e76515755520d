"""``vox federation records``: the printed zone lines parse as DNS records, and the TXT record is
the one discovery reads back as this server's key."""

from __future__ import annotations

from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives import serialization

from vox import datadir
from vox.cli import main
from vox.services.federation_peers import parse_key_record


def _rrsets(text: str) -> dict[str, dns.rrset.RRset]:
    out = {}
    for line in text.strip().splitlines():
        name, ttl, cls, typ, rdata = line.split(None, 4)
        rrset = dns.rrset.from_text(name, int(ttl), cls, typ, rdata)
        out[dns.rdatatype.to_text(rrset.rdtype)] = rrset
    return out


def _raw(key: object) -> bytes:
    assert hasattr(key, "public_bytes")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[no-any-return]


def test_records_publish_the_data_dir_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOX_SERVER_NAME", "chat.example.org")
    data = tmp_path / "data"
    assert main(["federation", "records", "--data-dir", str(data), "--target", "vox1.example.org:8443"]) == 0
    rrsets = _rrsets(capsys.readouterr().out)
    srv = rrsets["SRV"]
    assert srv.name.to_text() == "_vox._tcp.chat.example.org."
    assert srv.rdclass == dns.rdataclass.IN and srv.ttl == 3600
    (target,) = list(srv)
    assert (target.port, target.target.to_text()) == (8443, "vox1.example.org.")
    txt = rrsets["TXT"]
    assert txt.name.to_text() == "_vox-key.chat.example.org."
    (record,) = list(txt)
    published = parse_key_record([s.decode() for s in record.strings])
    assert published is not None
    # The key the daemon generated (here, on first use) and will sign with.
    own = datadir.prepare(data).federation_key.public_key()
    assert _raw(published) == _raw(own)
    # A second call prints the same key: it is read, not generated again.
    assert main(["federation", "records", "--data-dir", str(data)]) == 0
    again = _rrsets(capsys.readouterr().out)
    assert "SRV" not in again
    assert next(iter(again["TXT"])).strings == record.strings


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "no-port.example.org"], "--target"),
        (["--target", "bad_host!:443"], "--target"),
        (["--target", "vox1.example.org:70000"], "--target"),
        (["--ttl", "0"], "--ttl"),
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    monkeypatch.setenv("VOX_SERVER_NAME", "chat.example.org")
    assert main(["federation", "records", "--data-dir", str(tmp_path / "data"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert needle in captured.err


def test_without_server_name_there_is_nothing_to_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VOX_SERVER_NAME", raising=False)
    assert main(["federation", "records", "--data-dir", str(tmp_path / "data")]) == 2
    assert "server_name" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing generated for a server that does not federate
