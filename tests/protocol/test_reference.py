"""docs/gateway-reference.md is what vox.protocol.reference renders from the code, and what it
renders is true of the code (the header offsets are where encode_header puts each field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vox.protocol import gateway, media, reference


def test_committed_reference_is_up_to_date() -> None:
    committed = reference.DOC_PATH.read_text(encoding="utf-8")
    assert committed == reference.render(), "run: python3 -m vox.protocol.reference"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "ref.md"
    stale.write_text(reference.render().replace("| 4012 |", "| 4013 |"), encoding="utf-8")
    assert reference.main(["--check", "--path", str(stale)]) == 1
    assert reference.main(["--path", str(stale)]) == 0
    assert reference.main(["--check", "--path", str(stale)]) == 0


def test_reference_lists_every_code_definition() -> None:
    text = reference.render()
    for code in gateway.CloseCode:
        assert f"| {int(code)} |" in text
    for frame_type in gateway.CLIENT_TYPES:
        assert f"- `{frame_type}`" in text
    assert f"| {gateway.MAX_CLIENT_FRAME_BYTES} bytes |" in text
    assert f"| header size | {media.HEADER_SIZE} bytes" in text
    for member in (*media.MediaType, *media.Codec):
        assert f"| {int(member)} | {member.name.lower().replace('_', ' ')} |" in text


@pytest.mark.parametrize("field", [name for name, _ in reference.HEADER_FIELDS])
def test_header_offsets_are_where_encode_header_puts_each_field(field: str) -> None:
    """Set one field to a marker value, the rest to zero: the marker bytes appear exactly at the
    documented offset."""
    layout = {name: (offset, size) for offset, size, _, name, _ in reference.header_layout()}
    offset, size = layout[field]
    marker = 0xA5 if size == 1 else 0xA5B4C3D2
    base = {"type": 0, "codec": 0, "room_id": 0, "ssrc": 0, "version": 0}
    if field == "layers":
        header = media.MediaHeader(**base, spatial_id=0xA, temporal_id=0x5)
    elif field == "dtx":
        header = media.MediaHeader(**base, dtx=True, reserved=0x25)
    else:
        header = media.MediaHeader(**{**base, field: marker})
    data = media.encode_header(header)
    assert len(data) == sum(s for _, s in layout.values()) == media.HEADER_SIZE
    expected = bytearray(media.HEADER_SIZE)
    expected[offset : offset + size] = marker.to_bytes(size, "big")
    assert data == bytes(expected)
