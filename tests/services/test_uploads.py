"""Uploads: the sniffing table, file names, the streaming multipart reader, and all-or-nothing storage."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from vox.blobs import LocalBlobStore
from vox.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from vox.services import uploads
from vox.services.uploads import (
    MultipartLimits,
    MultipartReader,
    UploadPlan,
    check_emoji_image,
    filename_for,
    read_emoji_image,
    sanitize_filename,
    sniff,
)

KiB = 1024
MiB = 1024 * KiB

# -- samples: just enough of each format for its signature -----------------------------------------

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 32
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 32
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + b"\x00" * 32
M4A = b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom" + b"\x00" * 32
EBML = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81\x08"
WEBM = EBML + b"\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02" + b"\x00" * 32
MKV = EBML + b"\x42\x82\x88matroska\x42\x87\x81\x04\x42\x85\x81\x02" + b"\x00" * 32
OGG_PAGE = b"OggS\x00\x02" + b"\x00" * 8 + b"\x01\x00\x00\x00" + b"\x00" * 8 + b"\x01\x13"
OPUS = OGG_PAGE + b"OpusHead\x01\x02" + b"\x00" * 32
VORBIS = OGG_PAGE + b"\x01vorbis" + b"\x00" * 32
THEORA = OGG_PAGE + b"\x80theora" + b"\x00" * 32
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 32
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 64
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32
FLAC = b"fLaC\x00\x00\x00\x22" + b"\x00" * 32
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 32
TEXT = b"Patch notes: nerfed the sniper rifle.\n\tDamage 120 -> 100\r\n"


@pytest.mark.parametrize(
    ("data", "mime", "ext"),
    [
        (PNG, "image/png", "png"),
        (JPEG, "image/jpeg", "jpg"),
        (GIF, "image/gif", "gif"),
        (b"GIF87a" + b"\x00" * 16, "image/gif", "gif"),
        (WEBP, "image/webp", "webp"),
        (AVIF, "image/avif", "avif"),
        (MP4, "video/mp4", "mp4"),
        (MOV, "video/quicktime", "mov"),
        (M4A, "audio/mp4", "m4a"),
        (WEBM, "video/webm", "webm"),
        (MKV, "video/x-matroska", "mkv"),
        (OPUS, "audio/ogg", "opus"),
        (VORBIS, "audio/ogg", "ogg"),
        (THEORA, "video/ogg", "ogv"),
        (MP3_ID3, "audio/mpeg", "mp3"),
        (MP3_FRAME, "audio/mpeg", "mp3"),
        (WAV, "audio/wav", "wav"),
        (FLAC, "audio/flac", "flac"),
        (PDF, "application/pdf", "pdf"),
        (ZIP, "application/zip", "zip"),
        (b"PK\x05\x06" + b"\x00" * 18, "application/zip", "zip"),
        (TEXT, "text/plain", "txt"),
        (codecs.BOM_UTF8 + "Grüße, ça va? 日本語 🎮\n".encode(), "text/plain", "txt"),
        (b"\x1b[31mERROR\x1b[0m server crashed\n", "text/plain", "txt"),
        (b"<nick> gg wp\n<other> rematch?\n", "text/plain", "txt"),
        (b"a < b and b > c\n", "text/plain", "txt"),
        (b'{"key": "<html>"}\n', "text/plain", "txt"),
    ],
)
def test_sniff_allowed(data: bytes, mime: str, ext: str) -> None:
    found = sniff(data, complete=True)
    assert (found.mime_type, found.extension) == (mime, ext)
    assert found.mime_type in uploads.ALLOWED_MIME_TYPES


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 64, "Windows executables"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "ELF"),
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 64, "Mach-O"),
        (b"\xfe\xed\xfa\xce" + b"\x00" * 64, "Mach-O"),
        (b"\xca\xfe\xba\xbe" + b"\x00" * 64, "Mach-O"),
        (b"#!/bin/sh\nrm -rf ~\n", "scripts"),
        (codecs.BOM_UTF8 + b"#!/usr/bin/env python\n", "scripts"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"<html>\n<script>alert(1)</script>", "HTML"),
        (b"\n  \t<SCRIPT>alert(document.cookie)</SCRIPT>", "HTML"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "SVG"),
        (b'<?xml version="1.0"?><svg/>', "XML"),
        (b"<!-- hi --><div>x</div>", "HTML"),
        (codecs.BOM_UTF8 + b"<iframe src=x>", "HTML"),
        (b"<a href=javascript:alert(1)>x</a>", "HTML"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 32, "not allowed"),  # gzip
        (b"7z\xbc\xaf\x27\x1c" + b"\x00" * 32, "not allowed"),
        (b"BM" + b"\x00" * 64, "not allowed"),  # BMP
        (b"II*\x00" + b"\x00" * 32, "not allowed"),  # TIFF
        (b"RIFF\x24\x00\x00\x00AVI LIST" + b"\x00" * 32, "not allowed"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00heicmif1", "not allowed"),
        ("UTF-16 text".encode("utf-16"), "not allowed"),
        (b"caf\xe9 latin-1 is not UTF-8", "not allowed"),
        (b"text with a NUL\x00 inside", "not allowed"),
        (os.urandom(64) + b"\x00", "not allowed"),
        (b"", "empty"),
    ],
)
def test_sniff_refused(data: bytes, reason: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=reason) as err:
        sniff(data, complete=True)
    assert err.value.status == 415
    assert "image/png" in err.value.body()["error"]["allowed"]


def test_sniff_text_cut_inside_a_character() -> None:
    data = "héllo".encode()[:2]  # b"h\xc3": the é continues in the next chunk
    assert sniff(data, complete=False).mime_type == "text/plain"
    with pytest.raises(UnsupportedMediaType):
        sniff(data, complete=True)


# -- file names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cat.png", "cat.png"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("C:\\Users\\me\\Desktop\\clip.mp4", "clip.mp4"),
        ("/absolute/path/file.txt", "file.txt"),
        ("dir/", "file"),
        (".bashrc", "bashrc"),
        ("...", "file"),
        ("..", "file"),
        ("", "file"),
        (None, "file"),
        ("   ", "file"),
        ("name. . ", "name"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT1.log", "_LPT1.log"),
        ("nul .txt", "_nul .txt"),
        ("console.txt", "console.txt"),
        ("a\x00b\nc\td.txt", "abcd.txt"),
        ("photo\u202egnp.exe", "photognp.exe"),  # the bidi override that makes it read "exe.png"
        ("zero\u200bwidth.png", "zerowidth.png"),
        ('a<b>c:"d"|e?f*.txt', "a_b_c__d__e_f_.txt"),
        ("many    spaces\u00a0here.txt", "many spaces here.txt"),
        ("cafe\u0301.png", "caf\u00e9.png"),  # NFC
        ("日本語のファイル.png", "日本語のファイル.png"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_sanitize_filename_limits_length_keeping_the_extension() -> None:
    name = sanitize_filename("x" * 300 + ".png")
    assert len(name) == 128
    assert name.endswith("xx.png")
    assert len(sanitize_filename("y" * 300)) == 128
    assert sanitize_filename("z" * 10 + "." + "e" * 40) == "z" * 10 + "." + "e" * 40


@pytest.mark.parametrize(
    ("raw", "file_type", "expected"),
    [
        ("cat.png", uploads.PNG, "cat.png"),
        ("cat.PNG", uploads.PNG, "cat.PNG"),
        ("cat.jpg", uploads.PNG, "cat.png"),
        ("cute.png.exe", uploads.PNG, "cute.png.png"),
        ("setup.exe", uploads.PNG, "setup.png"),
        ("photo.jpeg", uploads.JPEG, "photo.jpeg"),
        ("run.bat", uploads.TEXT, "run.txt"),
        ("page.html", uploads.TEXT, "page.txt"),
        ("notes.md", uploads.TEXT, "notes.md"),
        ("server.cfg", uploads.TEXT, "server.cfg"),
        ("mod.jar", uploads.ZIP, "mod.zip"),
        ("report.docx", uploads.ZIP, "report.docx"),
        ("archive", uploads.ZIP, "archive.zip"),
        (None, uploads.PNG, "file.png"),
        ("../x/.hidden", uploads.PDF, "hidden.pdf"),
        ("a" * 200 + ".exe", uploads.PNG, "a" * 124 + ".png"),
    ],
)
def test_filename_for_sniffed_type(raw: str | None, file_type: uploads.FileType, expected: str) -> None:
    assert filename_for(raw, file_type) == expected


# -- multipart -----------------------------------------------------------------------------------

BOUNDARY = "vox-boundary-7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, filename: str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def stream(data: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await trio.lowlevel.checkpoint()


async def collect(reader: MultipartReader) -> list[tuple[str, str | None, bytes, int]]:
    """(name, filename, content, largest chunk) of every part."""
    out = []
    async for p in reader:
        chunks = [c async for c in p]
        out.append((p.name, p.filename, b"".join(chunks), max((len(c) for c in chunks), default=0)))
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 4096, 10 * MiB])
async def test_multipart_parts_in_any_chunking(chunk_size: int) -> None:
    big = os.urandom(300 * KiB) + ("\r\n--" + BOUNDARY[:-1]).encode()  # a near-boundary inside data
    raw = body(
        part("content", "hello @everyone ✓".encode()),
        part("file", PNG, "a.png", "image/png"),
        part("file", big, "b.bin", "application/octet-stream"),
        part("file", b"", "empty.txt"),
    )
    got = await collect(MultipartReader(stream(raw, chunk_size), CONTENT_TYPE))
    assert [(n, f, c) for n, f, c, _ in got] == [
        ("content", None, "hello @everyone ✓".encode()),
        ("file", "a.png", PNG),
        ("file", "b.bin", big),
        ("file", "empty.txt", b""),
    ]
    # Content flows through in pieces no larger than what came off the wire (plus, at worst, a
    # held-back partial boundary that turned out to be data).
    assert all(largest <= chunk_size + len(BOUNDARY) + 8 for _, _, _, largest in got)


async def test_multipart_headers_and_filenames() -> None:
    raw = (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="caf\u00e9 \U0001f3ae.png"\r\n'
            "Content-Type: image/png\r\n"
            "X-Extra: 1\r\n\r\n"
        ).encode()
        + PNG
        + b"\r\n"
    )
    raw += (
        f"--{BOUNDARY}\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve.txt\r\n\r\n"
        "text\r\n"
    ).encode()
    raw += f"--{BOUNDARY}--\r\n".encode()
    reader = MultipartReader(stream(raw, 5), CONTENT_TYPE)
    first = await reader.next_part()
    assert first is not None
    assert (first.name, first.filename, first.content_type) == (
        "file",
        "caf\u00e9 \U0001f3ae.png",
        "image/png",
    )
    assert first.headers["x-extra"] == "1"
    # Not read: moving on discards it.
    second = await reader.next_part()
    assert second is not None and second.filename == "na\u00efve.txt"
    assert await second.read(100) == b"text"
    assert await reader.next_part() is None
    assert await reader.next_part() is None
    assert [c async for c in first] == []  # what the reader skipped is gone, not replayed


@pytest.mark.parametrize(
    "raw",
    [
        # cut in the middle of a file's content
        body(part("file", PNG, "a.png"))[: len(part("file", PNG, "a.png")) - 20],
        # cut inside the headers
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; na".encode(),
        # complete parts but no closing boundary
        part("content", b"hi") + part("file", PNG, "a.png"),
        # nothing at all
        b"",
    ],
    ids=["mid-content", "mid-headers", "no-closing-boundary", "empty"],
)
async def test_multipart_body_cut_short_is_an_error(raw: bytes) -> None:
    with pytest.raises(ValidationError, match="ended before its closing boundary"):
        await collect(MultipartReader(stream(raw, 16), CONTENT_TYPE))


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not multipart at all\r\n",
        f"--{BOUNDARY}\r\nno colon in this header line\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: attachment; name="x"\r\n\r\nx\r\n--{BOUNDARY}--\r\n'.encode(),
    ],
    ids=["garbage", "bad-header", "no-disposition", "not-form-data"],
)
async def test_multipart_malformed(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        await collect(MultipartReader(stream(raw), CONTENT_TYPE))


@pytest.mark.parametrize(
    ("content_type", "error"),
    [
        ("application/json", UnsupportedMediaType),
        ("multipart/mixed; boundary=x", UnsupportedMediaType),
        ("", UnsupportedMediaType),
        ("multipart/form-data", ValidationError),
        ("multipart/form-data; boundary=" + "x" * 71, ValidationError),
    ],
)
def test_multipart_content_type_checked(content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        MultipartReader(stream(b""), content_type)


async def test_multipart_limits() -> None:
    limits = MultipartLimits(
        max_files=2, max_parts=4, max_field_bytes=10, max_header_bytes=200, max_headers=3
    )
    too_many_files = body(*(part("file", b"x", f"{i}.txt") for i in range(3)))
    with pytest.raises(ValidationError, match="at most 2 files"):
        await collect(MultipartReader(stream(too_many_files), CONTENT_TYPE, limits=limits))
    too_many_parts = body(*(part(f"f{i}", b"x") for i in range(5)))
    with pytest.raises(ValidationError, match="at most 4 form fields"):
        await collect(MultipartReader(stream(too_many_parts), CONTENT_TYPE, limits=limits))
    long_header = body(part("file", b"x", "n" * 300 + ".txt"))
    with pytest.raises(PayloadTooLarge):
        await collect(MultipartReader(stream(long_header), CONTENT_TYPE, limits=limits))
    many_headers = body(part("f", b"x").replace(b"\r\n\r\n", b"\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 1))
    with pytest.raises(ValidationError, match="too many headers"):
        await collect(MultipartReader(stream(many_headers), CONTENT_TYPE, limits=limits))
    reader = MultipartReader(stream(body(part("content", b"x" * 11))), CONTENT_TYPE, limits=limits)
    field = await reader.next_part()
    assert field is not None
    with pytest.raises(PayloadTooLarge, match="content"):
        await field.read_text()
    whole = MultipartLimits(max_body_bytes=1000)
    with pytest.raises(PayloadTooLarge):
        await collect(
            MultipartReader(stream(body(part("file", b"x" * 2000, "a.txt"))), CONTENT_TYPE, limits=whole)
        )


async def test_text_field_must_be_utf8() -> None:
    reader = MultipartReader(stream(body(part("content", b"\xff\xfe"))), CONTENT_TYPE)
    field = await reader.next_part()
    assert field is not None
    with pytest.raises(ValidationError, match="UTF-8"):
        await field.read_text()


# -- the upload pipeline ---------------------------------------------------------------------------

CHANNEL = "c0ffee00-0000-4000-8000-000000000001"
MESSAGE = "m5a9e000-0000-4000-8000-000000000002"
KEY = re.compile(rf"^attachments/{CHANNEL}/{MESSAGE}/[0-9a-f-]{{36}}\.[a-z0-9]+$")


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def blob_root(tmp_path: Path) -> Path:
    root = tmp_path / "blobs"
    root.mkdir()
    return root


def plan(root: Path, max_file_bytes: int = 25 * MiB, **limits: int) -> UploadPlan:
    return UploadPlan(
        LocalBlobStore(root),
        channel_id=CHANNEL,
        message_id=MESSAGE,
        max_file_bytes=max_file_bytes,
        limits=MultipartLimits(**limits),
    )


async def test_upload_stores_every_file_under_its_key(blob_root: Path) -> None:
    big_text = ("line of a long server log\n" * 100_000).encode()  # > SNIFF_BYTES, checked as it streams
    raw = body(
        part("content", b"look at this"),
        part("file", PNG, "../../screenshot.png", "image/png"),
        part("file", PDF, "guide.png", "image/png"),  # declared PNG, really a PDF
        part("file", big_text, "server.log", "application/octet-stream"),
    )
    async with plan(blob_root) as p:
        upload = await p.receive(stream(raw, 8 * KiB), CONTENT_TYPE)
    assert upload.content == "look at this"
    got = [(a.filename, a.mime_type, a.size_bytes) for a in upload.attachments]
    assert got == [
        ("screenshot.png", "image/png", len(PNG)),
        ("guide.pdf", "application/pdf", len(PDF)),
        ("server.log", "text/plain", len(big_text)),
    ]
    store = LocalBlobStore(blob_root)
    for attachment, data in zip(upload.attachments, [PNG, PDF, big_text], strict=True):
        assert KEY.match(attachment.storage_key)
        assert attachment.storage_key.endswith(f"/{attachment.id}.{attachment.storage_key.rsplit('.', 1)[1]}")
        assert await store.get(attachment.storage_key) == data
    assert [a.storage_key.rsplit(".", 1)[1] for a in upload.attachments] == ["png", "pdf", "txt"]
    assert len(files_under(blob_root)) == 3


async def test_disguised_executable_is_refused_and_nothing_is_kept(blob_root: Path) -> None:
    exe = b"MZ\x90\x00" + os.urandom(10_000)
    raw = body(part("file", PNG, "ok.png"), part("file", exe, "cute-cat.png", "image/png"))
    with pytest.raises(UnsupportedMediaType, match="Windows executables"):
        async with plan(blob_root) as p:
            await p.receive(stream(raw), CONTENT_TYPE)
    assert files_under(blob_root) == []


async def test_text_turning_binary_after_the_sniffed_head_is_refused(blob_root: Path) -> None:
    sneaky = b"just text\n" * 1000 + b"\x00\x01binary payload" + b"x" * 100_000
    raw = body(part("file", PNG, "ok.png"), part("file", sneaky, "notes.txt"))
    with pytest.raises(UnsupportedMediaType):
        async with plan(blob_root) as p:
            await p.receive(stream(raw), CONTENT_TYPE)
    assert files_under(blob_root) == []


async def test_too_large_file_is_413_and_nothing_is_kept(blob_root: Path) -> None:
    raw = body(part("file", PNG, "ok.png"), part("file", ZIP + b"\x00" * (2 * MiB), "big.zip"))
    with pytest.raises(PayloadTooLarge, match=r"big\.zip") as err:
        async with plan(blob_root, max_file_bytes=MiB) as p:
            await p.receive(stream(raw), CONTENT_TYPE)
    assert err.value.status == 413
    assert files_under(blob_root) == []
    assert list(blob_root.iterdir()) == []  # no empty directories either


async def test_body_cut_after_a_stored_file_keeps_nothing(blob_root: Path) -> None:
    raw = body(part("file", PNG, "ok.png"), part("file", JPEG * 100, "b.jpg"))
    with pytest.raises(ValidationError, match="closing boundary"):
        async with plan(blob_root) as p:
            await p.receive(stream(raw[: len(raw) - 500]), CONTENT_TYPE)
    assert files_under(blob_root) == []


async def test_failure_after_upload_rolls_back(blob_root: Path) -> None:
    """The message insert failing inside the plan's block removes the stored files."""
    raw = body(part("file", PNG, "a.png"), part("file", GIF, "b.gif"))
    with pytest.raises(RuntimeError, match="database down"):
        async with plan(blob_root) as p:
            upload = await p.receive(stream(raw), CONTENT_TYPE)
            assert len(files_under(blob_root)) == 2 and len(upload.attachments) == 2
            raise RuntimeError("database down")
    assert files_under(blob_root) == []


async def test_cancelled_upload_keeps_nothing(blob_root: Path) -> None:
    first_stored = trio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        yield body(part("file", PNG, "a.png"))[: -len(f"--{BOUNDARY}--\r\n")]
        yield part("file", WEBM + b"\x00" * (3 * MiB), "clip.webm")[: 2 * MiB]
        first_stored.set()
        await trio.sleep_forever()
        yield b""

    with trio.move_on_after(5) as timeout:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                async with plan(blob_root) as p:
                    await p.receive(slow_client(), CONTENT_TYPE)

            nursery.start_soon(run)
            await first_stored.wait()
            await trio.sleep(0.2)
            assert len(files_under(blob_root)) == 2  # a.png and clip.webm's temp file
            nursery.cancel_scope.cancel()
    assert not timeout.cancelled_caught
    assert files_under(blob_root) == []


async def test_an_upload_needs_a_file(blob_root: Path) -> None:
    with pytest.raises(ValidationError, match="at least one file"):
        async with plan(blob_root) as p:
            await p.receive(stream(body(part("content", b"no files"))), CONTENT_TYPE)
    # A browser's unused file input (empty name, no content) is not a file.
    with pytest.raises(ValidationError, match="at least one file"):
        async with plan(blob_root) as p:
            await p.receive(stream(body(part("file", b"", ""))), CONTENT_TYPE)
    async with plan(blob_root) as p:
        upload = await p.receive(stream(body(part("file", b"", ""), part("file", PNG, ""))), CONTENT_TYPE)
    assert [a.filename for a in upload.attachments] == ["file.png"]


async def test_empty_file_and_duplicate_fields_are_refused(blob_root: Path) -> None:
    with pytest.raises(ValidationError, match="empty"):
        async with plan(blob_root) as p:
            await p.receive(
                stream(body(part("file", PNG, "a.png"), part("file", b"", "b.png"))), CONTENT_TYPE
            )
    with pytest.raises(ValidationError, match="twice"):
        async with plan(blob_root) as p:
            await p.receive(
                stream(body(part("content", b"a"), part("file", PNG, "a.png"), part("content", b"b"))),
                CONTENT_TYPE,
            )
    assert files_under(blob_root) == []


async def test_file_count_limit(blob_root: Path) -> None:
    raw = body(*(part("file", PNG, f"{i}.png") for i in range(4)))
    with pytest.raises(ValidationError, match="at most 3 files"):
        async with plan(blob_root, max_files=3) as p:
            await p.receive(stream(raw), CONTENT_TYPE)
    assert files_under(blob_root) == []


def test_plan_refuses_ids_that_would_escape_the_key() -> None:
    with pytest.raises(ValueError):
        UploadPlan(LocalBlobStore(Path("/nonexistent")), channel_id="../x", message_id="m", max_file_bytes=1)


# -- emoji ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [PNG, GIF, WEBP])
def test_emoji_formats(data: bytes) -> None:
    assert check_emoji_image(data).mime_type in {"image/png", "image/gif", "image/webp"}


@pytest.mark.parametrize("data", [JPEG, TEXT, b"<svg onload=alert(1)>", b"MZ" + b"\x00" * 10])
def test_emoji_other_types_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType, match="PNG, GIF or WebP"):
        check_emoji_image(data)


async def test_emoji_size_limit_stops_reading_early() -> None:
    pulled = 0

    async def huge() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield PNG
        for _ in range(1000):
            pulled += 1
            yield b"\x00" * (64 * KiB)

    with pytest.raises(PayloadTooLarge):
        await read_emoji_image(huge())
    assert pulled == 4  # 256 KiB reached: it stopped there
    with pytest.raises(PayloadTooLarge):
        check_emoji_image(PNG + b"\x00" * (256 * KiB))
    data, found = await read_emoji_image(stream(PNG + b"\x00" * (100 * KiB)))
    assert found.mime_type == "image/png" and len(data) == len(PNG) + 100 * KiB
