"""File uploads: type sniffing, filename sanitizing, a streaming multipart reader, all-or-nothing storage.

No HTTP framework here: the REST route hands over the request body as an async iterator of byte
chunks plus its Content-Type header, and gets back the stored attachments or an APIError.

Types (protocol.md section 4). A file's type is decided from its first bytes only; the Content-Type
a client declares for a part and the file's extension are both ignored. Allowed:

=================  ===========  ======================================================
mime type          stored as    recognised by
=================  ===========  ======================================================
image/png          .png         PNG signature
image/jpeg         .jpg         FF D8 FF
image/gif          .gif         GIF87a / GIF89a
image/webp         .webp        RIFF....WEBP
image/avif         .avif        ISO-BMFF ftyp brand avif/avis
video/mp4          .mp4         ISO-BMFF ftyp with an MP4 brand (isom, mp41, mp42, avc1...)
video/quicktime    .mov         ftyp brand "qt  "
audio/mp4          .m4a         ftyp brand "M4A " / "M4B "
video/webm         .webm        EBML header with DocType webm
video/x-matroska   .mkv         EBML header with DocType matroska (OBS's default)
audio/ogg          .ogg/.opus   OggS (Vorbis, Opus, FLAC in Ogg)
video/ogg          .ogv         OggS carrying Theora
audio/mpeg         .mp3         ID3 tag or an MPEG layer III frame header
audio/wav          .wav         RIFF....WAVE
audio/flac         .flac        fLaC
application/pdf    .pdf         %PDF-
application/zip    .zip         PK\\3\\4 / PK\\5\\6 (contents not inspected; .docx/.xlsx/... names kept)
text/plain         .txt         valid UTF-8 throughout, no NUL or other C0 controls but
                                tab, LF, CR, FF and ESC (ANSI colours in game-server logs)
=================  ===========  ======================================================

Everything else is refused with 415, and these by name: Windows (MZ), ELF and Mach-O executables,
Java classes, ``#!`` scripts, and HTML, SVG and XML (they run scripts when a browser renders them).
BMP, TIFF and HEIC are left out: browsers cannot show the last two and BMP is better sent as PNG.

Names: the stored name keeps the client's name (sanitized) but its extension is replaced by the
sniffed type's when it is not one of that type's, so ``cat.png.exe`` holding a PNG becomes
``cat.png.png`` and a text file called ``run.bat`` becomes ``run.txt``: a download never gets an
extension that the desktop would execute.
"""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

import trio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from vox.blobs.base import BlobStore, validate_key
from vox.errors import BlobError, PayloadTooLarge, UnsupportedMediaType, ValidationError

log = logging.getLogger("vox.uploads")

# -- file types ------------------------------------------------------------------------------------

# Enough for every signature below (the deepest, an EBML DocType or an ftyp brand list, sits in the
# first hundred bytes) and a meaningful sample for the text check.
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class FileType:
    mime_type: str
    extension: str  # what stored names and keys get
    extensions: frozenset[str]  # extensions a client's file name may keep for this type
    is_text: bool = False


def _ft(mime: str, ext: str, *others: str, is_text: bool = False) -> FileType:
    return FileType(mime, ext, frozenset({ext, *others}), is_text)


PNG = _ft("image/png", "png")
JPEG = _ft("image/jpeg", "jpg", "jpeg", "jpe", "jfif")
GIF = _ft("image/gif", "gif")
WEBP = _ft("image/webp", "webp")
AVIF = _ft("image/avif", "avif")
MP4 = _ft("video/mp4", "mp4", "m4v")
MOV = _ft("video/quicktime", "mov", "qt")
M4A = _ft("audio/mp4", "m4a", "m4b")
WEBM = _ft("video/webm", "webm")
MKV = _ft("video/x-matroska", "mkv", "mka")
OGG = _ft("audio/ogg", "ogg", "oga", "opus")
OPUS = _ft("audio/ogg", "opus", "ogg", "oga")
OGV = _ft("video/ogg", "ogv", "ogg")
MP3 = _ft("audio/mpeg", "mp3")
WAV = _ft("audio/wav", "wav")
FLAC = _ft("audio/flac", "flac")
PDF = _ft("application/pdf", "pdf")
ZIP = _ft("application/zip", "zip", "docx", "xlsx", "pptx", "odt", "ods", "odp", "epub")
TEXT = _ft(
    "text/plain",
    "txt",
    *("md", "markdown", "log", "csv", "tsv", "json", "yaml", "yml", "toml", "ini", "cfg", "conf"),
    *("srt", "vtt", "rst", "diff", "patch"),
    is_text=True,
)

ALLOWED_TYPES: tuple[FileType, ...] = (
    PNG, JPEG, GIF, WEBP, AVIF, MP4, MOV, M4A, WEBM, MKV, OGG, OPUS, OGV, MP3, WAV, FLAC, PDF, ZIP, TEXT,
)  # fmt: skip
ALLOWED_MIME_TYPES: tuple[str, ...] = tuple(sorted({t.mime_type for t in ALLOWED_TYPES}))
EMOJI_TYPES: tuple[FileType, ...] = (PNG, GIF, WEBP)
EMOJI_MAX_BYTES = 256 * 1024

_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9", b"mp41", b"mp42", b"mp71"}
    | {b"avc1", b"av01", b"dash", b"M4V ", b"M4VH", b"M4VP", b"MSNV", b"f4v ", b"mmp4"}
)

# (signature, reason) for types refused by name, checked before anything else.
_REFUSED: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "Windows executables are not allowed"),
    (b"\x7fELF", "ELF executables are not allowed"),
    (b"\xfe\xed\xfa\xce", "Mach-O executables are not allowed"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executables are not allowed"),
    (b"\xce\xfa\xed\xfe", "Mach-O executables are not allowed"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executables are not allowed"),
    (b"\xca\xfe\xba\xbe", "Mach-O and Java class files are not allowed"),
    (b"#!", "scripts are not allowed"),
)

# Markup a browser would render (and run scripts in) if it ever sniffed the file, after the
# WHATWG MIME sniffing patterns. Tags must be followed by whitespace, "/" or ">" to count.
_MARKUP_TAGS = (
    "!doctype", "html", "head", "script", "iframe", "h1", "div", "font", "table", "a", "style",
    "title", "b", "body", "br", "p", "svg", "xml", "object", "embed", "meta", "link", "img", "form",
    "math", "template",
)  # fmt: skip
_MARKUP = re.compile(r"<(?:!--|\?xml|(?:" + "|".join(re.escape(t) for t in _MARKUP_TAGS) + r")[\s/>])", re.I)

# C0 controls other than tab, LF, FF, CR and ESC: binary files have them, text does not.
_BAD_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")


def _refuse(reason: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(reason, allowed=list(ALLOWED_MIME_TYPES))


class _TextChecker:
    """Incremental check that a stream is UTF-8 text, so a file is vetted as it is stored."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, data: bytes, *, final: bool = False) -> str:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError:
            raise _refuse("file type not allowed (binary data that is no known type)") from None
        if _BAD_CONTROLS.search(text):
            raise _refuse("file type not allowed (binary data that is no known type)")
        return text


def _sniff_iso_bmff(head: bytes) -> FileType | None:
    size = int.from_bytes(head[0:4], "big")
    major = head[8:12]
    brands = {major, *(head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4))}
    if major in (b"avif", b"avis") or (major in (b"mif1", b"msf1") and b"avif" in brands):
        return AVIF
    if major == b"qt  ":
        return MOV
    if major in (b"M4A ", b"M4B "):
        return M4A
    if brands & _MP4_BRANDS:
        return MP4
    return None


def _sniff_ebml(head: bytes) -> FileType | None:
    idx = head.find(b"\x42\x82", 4, 64)  # the DocType element
    if idx < 0 or idx + 3 > len(head) or not head[idx + 2] & 0x80:
        return None
    doc_type = head[idx + 3 : idx + 3 + (head[idx + 2] & 0x7F)]
    return {b"webm": WEBM, b"matroska": MKV}.get(doc_type)


def _sniff_ogg(head: bytes) -> FileType:
    first_packet = head[27 + head[26] : 27 + head[26] + 8] if len(head) > 27 else b""
    if first_packet.startswith(b"OpusHead"):
        return OPUS
    if first_packet.startswith(b"\x80theora"):
        return OGV
    return OGG


def _is_mp3_frame(head: bytes) -> bool:
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0x3
    layer = (head[1] >> 1) & 0x3
    bitrate = head[2] >> 4
    sample_rate = (head[2] >> 2) & 0x3
    return version != 1 and layer == 1 and bitrate not in (0, 15) and sample_rate != 3


def _sniff_binary(head: bytes) -> FileType | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return WAV
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _sniff_ebml(head)
    if head.startswith(b"OggS"):
        return _sniff_ogg(head)
    if head.startswith(b"fLaC"):
        return FLAC
    if head.startswith(b"ID3") or _is_mp3_frame(head):
        return MP3
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return ZIP
    return None


def sniff(head: bytes, *, complete: bool = False) -> FileType:
    """The allowed type of a file from its first bytes, or UnsupportedMediaType.

    ``complete`` says ``head`` is the whole file, so a multi-byte UTF-8 character cut at its end is
    an error rather than a character continued in the next chunk.
    """
    if not head:
        raise _refuse("an empty file has no type")
    body = head[3:] if head.startswith(codecs.BOM_UTF8) else head
    for signature, reason in _REFUSED:
        if body.startswith(signature):
            raise _refuse(reason)
    found = _sniff_binary(head)
    if found is not None:
        return found
    text = _TextChecker().feed(head, final=complete)
    if _MARKUP.match(text.lstrip("\ufeff \t\r\n\x0c")):
        raise _refuse("HTML, SVG and XML files are not allowed")
    return TEXT


def check_emoji_image(data: bytes, *, max_bytes: int = EMOJI_MAX_BYTES) -> FileType:
    """Vet a guild emoji image: PNG, GIF or WebP of at most ``max_bytes`` (256 KiB)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"emoji images are limited to {max_bytes} bytes", max_bytes=max_bytes)
    if not data:
        raise ValidationError("the emoji image is empty", {"image": "empty"})
    try:
        found = sniff(data[:SNIFF_BYTES], complete=len(data) <= SNIFF_BYTES)
    except UnsupportedMediaType:
        found = None
    if found is None or found not in EMOJI_TYPES:
        raise UnsupportedMediaType(
            "emoji images must be PNG, GIF or WebP", allowed=[t.mime_type for t in EMOJI_TYPES]
        )
    return found


async def read_limited(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """All of ``chunks`` in memory, refusing (413) as soon as more than ``max_bytes`` arrive."""
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"larger than {max_bytes} bytes", max_bytes=max_bytes)
    return bytes(data)


async def read_emoji_image(
    chunks: AsyncIterable[bytes], *, max_bytes: int = EMOJI_MAX_BYTES
) -> tuple[bytes, FileType]:
    """Read a streamed emoji image (at most ``max_bytes`` held) and vet it."""
    data = await read_limited(chunks, max_bytes)
    return data, check_emoji_image(data, max_bytes=max_bytes)


# -- file names ------------------------------------------------------------------------------------

MAX_FILENAME_CHARS = 128
_MAX_EXTENSION_CHARS = 16
_FALLBACK_NAME = "file"
# Characters Windows refuses in names; a downloaded file must be savable everywhere.
_FORBIDDEN = re.compile(r'[<>:"|?*]')
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in range(10)}
    | {f"lpt{i}" for i in range(10)}
)
# Controls, format characters (bidi overrides that make "gpj.exe" read as "exe.jpg", zero-width
# characters), surrogates, private-use and unassigned code points, line and paragraph separators.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= _MAX_EXTENSION_CHARS and " " not in ext:
        return stem, ext
    return name, ""


def _truncate(name: str, max_chars: int) -> str:
    if len(name) <= max_chars:
        return name
    stem, ext = _split_extension(name)
    if ext:
        stem = stem[: max_chars - len(ext) - 1].rstrip(" .")
        return f"{stem}.{ext}" if stem else f"{_FALLBACK_NAME}.{ext}"
    return name[:max_chars].rstrip(" .") or _FALLBACK_NAME


def sanitize_filename(raw: str | None, *, max_chars: int = MAX_FILENAME_CHARS) -> str:
    """A display and download name safe on every OS: no directories, controls or reserved names."""
    if not raw:
        return _FALLBACK_NAME
    name = unicodedata.normalize("NFC", raw)
    name = re.split(r"[/\\]", name)[-1]  # both separators: a Windows path arrives with backslashes
    kept: list[str] = []
    for char in name:
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES:
            continue
        kept.append(" " if category == "Zs" else char)
    name = _FORBIDDEN.sub("_", "".join(kept))
    name = re.sub(r" {2,}", " ", name)
    # Leading dots would hide the file (or spell ".."); Windows drops trailing dots and spaces.
    name = name.strip(" .")
    if not name:
        return _FALLBACK_NAME
    if name.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        name = "_" + name
    return _truncate(name, max_chars)


def filename_for(raw: str | None, file_type: FileType, *, max_chars: int = MAX_FILENAME_CHARS) -> str:
    """The sanitized name with an extension that matches the sniffed content."""
    name = sanitize_filename(raw, max_chars=max_chars)
    stem, ext = _split_extension(name)
    if ext.lower() in file_type.extensions:
        return name
    return _truncate(f"{stem}.{file_type.extension}", max_chars)


# -- multipart -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultipartLimits:
    max_files: int = 10
    max_parts: int = 20  # files and text fields together
    max_field_bytes: int = 16_384  # a text field; "content" is 4000 characters, 4 bytes each at most
    max_headers: int = 16  # per part
    max_header_bytes: int = 8_192  # one header line
    max_body_bytes: int | None = None  # the whole request; None leaves it to the per-file limit


DEFAULT_LIMITS = MultipartLimits()


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UnsupportedMediaType("expected a multipart/form-data body", allowed=["multipart/form-data"])
    boundary = options.get(b"boundary", b"")
    if not 1 <= len(boundary) <= 70:  # RFC 2046 section 5.1.1
        raise ValidationError("the multipart boundary is missing or invalid", {"content_type": "boundary"})
    return boundary


def _header_text(raw: bytes) -> str:
    # Browsers send file names as raw UTF-8 inside the quoted parameter (RFC 7578 section 4.2).
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# filename*=UTF-8''caf%C3%A9.png (RFC 5987): RFC 7578 forbids it in forms, a few clients send it anyway.
_EXTENDED_FILENAME = re.compile(r"""filename\*\s*=\s*([A-Za-z0-9_-]+)'[^']*'([^;\s]+)""", re.I)


def _extended_filename(disposition: str) -> str | None:
    match = _EXTENDED_FILENAME.search(disposition)
    if match is None:
        return None
    charset = match.group(1).lower()
    try:
        return urllib.parse.unquote(match.group(2), encoding=charset, errors="replace")
    except LookupError:
        return urllib.parse.unquote(match.group(2), encoding="utf-8", errors="replace")


class Part:
    """One part of a multipart body; async-iterable over its content, which is read from the wire.

    Read it (or not) before asking the reader for the next part: moving on discards what is left.
    """

    def __init__(
        self,
        reader: MultipartReader,
        name: str,
        filename: str | None,
        content_type: str | None,
        headers: Mapping[str, str],
    ) -> None:
        self._reader = reader
        self.name = name
        self.filename = filename  # as sent, unsanitized: see sanitize_filename
        self.content_type = content_type  # as declared by the client: never trusted
        self.headers = headers
        self._done = False

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def __aiter__(self) -> Part:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        chunk = await self._reader._part_data(self)
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk

    async def read(self, max_bytes: int) -> bytes:
        """The rest of this part in memory; PayloadTooLarge past ``max_bytes``."""
        data = bytearray()
        async for chunk in self:
            data += chunk
            if len(data) > max_bytes:
                raise PayloadTooLarge(
                    f"form field {self.name!r} is larger than {max_bytes} bytes", max_bytes=max_bytes
                )
        return bytes(data)

    async def read_text(self, max_bytes: int | None = None) -> str:
        """The rest of this part as UTF-8 text, at most ``max_bytes`` (default: the field limit)."""
        data = await self.read(self._reader.limits.max_field_bytes if max_bytes is None else max_bytes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(
                f"form field {self.name!r} is not UTF-8", {self.name: "not utf-8"}
            ) from None
        if "\x00" in text:
            # PostgreSQL text cannot hold it (as for JSON bodies, vox.api.text).
            raise ValidationError(
                f"form field {self.name!r} contains U+0000", {self.name: "must not contain U+0000"}
            )
        return text

    async def _drain(self) -> None:
        async for _ in self:
            pass


_Event = tuple[str, object]


class MultipartReader:
    """Parts of a multipart/form-data body, pulled from the body one chunk at a time.

    Memory is bounded by one body chunk plus the header limits: file content flows from the
    parser's callbacks to the consumer of ``Part`` without being collected. A body that ends
    before its closing boundary, or that breaks the syntax, is a ValidationError; one that breaks a
    limit is a ValidationError (counts) or PayloadTooLarge (sizes).

    Usage::

        async for part in MultipartReader(body, content_type):
            if part.is_file:
                async for chunk in part: ...
            else:
                text = await part.read_text()
    """

    def __init__(
        self,
        body: AsyncIterable[bytes],
        content_type: str,
        *,
        limits: MultipartLimits = DEFAULT_LIMITS,
    ) -> None:
        self.limits = limits
        self._body = aiter(body)
        self._events: deque[_Event] = deque()
        self._parser = MultipartParser(
            _boundary(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        self._field = bytearray()
        self._value = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._received = 0
        self._input_done = False
        self._finished = False
        self._current: Part | None = None
        self.parts_seen = 0
        self.files_seen = 0

    # The parser's callbacks run inside parser.write(); they only record events (or raise).

    def _on_part_begin(self) -> None:
        self.parts_seen += 1
        if self.parts_seen > self.limits.max_parts:
            raise ValidationError(
                f"at most {self.limits.max_parts} form fields are allowed", {"body": "too many parts"}
            )
        self._headers = []
        self._field.clear()
        self._value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]
        self._check_header_size()

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header_size()

    def _check_header_size(self) -> None:
        if len(self._field) + len(self._value) > self.limits.max_header_bytes:
            raise PayloadTooLarge(
                f"a multipart header is longer than {self.limits.max_header_bytes} bytes",
                max_bytes=self.limits.max_header_bytes,
            )

    def _on_header_end(self) -> None:
        if len(self._headers) >= self.limits.max_headers:
            raise ValidationError("too many headers in a multipart part", {"body": "too many headers"})
        name = bytes(self._field).decode("latin-1").strip().lower()
        self._headers.append((name, bytes(self._value).decode("latin-1").strip()))
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._events.append(("headers", tuple(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(("part_end", None))

    def _on_end(self) -> None:
        self._events.append(("end", None))

    async def _next_event(self) -> _Event:
        while not self._events:
            if self._input_done:
                raise ValidationError(
                    "the multipart body ended before its closing boundary", {"body": "truncated"}
                )
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._input_done = True
                continue
            self._received += len(chunk)
            limit = self.limits.max_body_bytes
            if limit is not None and self._received > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes", max_bytes=limit)
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise ValidationError(f"malformed multipart body: {exc}", {"body": "malformed"}) from None
        return self._events.popleft()

    def _make_part(self, raw_headers: tuple[tuple[str, str], ...]) -> Part:
        headers = MappingProxyType(dict(raw_headers))
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise ValidationError("a multipart part has no Content-Disposition", {"body": "malformed"})
        kind, options = parse_options_header(disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise ValidationError("a multipart part is not a named form-data field", {"body": "malformed"})
        raw_filename = options.get(b"filename")
        filename = _extended_filename(disposition) if raw_filename is None else _header_text(raw_filename)
        if filename is not None:
            self.files_seen += 1
            if self.files_seen > self.limits.max_files:
                raise ValidationError(
                    f"at most {self.limits.max_files} files per message", {"file": "too many files"}
                )
        declared = headers.get("content-type")
        return Part(self, _header_text(name), filename, declared, headers)

    async def _part_data(self, part: Part) -> bytes | None:
        if part is not self._current:
            raise RuntimeError("a multipart part was read after the reader moved past it")
        kind, payload = await self._next_event()
        if kind == "data":
            assert isinstance(payload, bytes)
            return payload
        if kind == "part_end":
            return None
        raise ValidationError("malformed multipart body", {"body": "malformed"})  # pragma: no cover

    async def next_part(self) -> Part | None:
        """The next part, or None after the closing boundary."""
        if self._current is not None:
            await self._current._drain()
            self._current = None
        if self._finished:
            return None
        kind, payload = await self._next_event()
        if kind == "end":
            self._finished = True
            return None
        if kind != "headers":  # pragma: no cover - the parser always sends headers first
            raise ValidationError("malformed multipart body", {"body": "malformed"})
        assert isinstance(payload, tuple)
        self._current = self._make_part(payload)
        return self._current

    def __aiter__(self) -> MultipartReader:
        return self

    async def __anext__(self) -> Part:
        part = await self.next_part()
        if part is None:
            raise StopAsyncIteration
        return part


# -- storing a message's attachments -------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DISCARD_TIMEOUT_S = 30.0


def attachment_key(channel_id: str, message_id: str, attachment_id: str, extension: str) -> str:
    """``attachments/{channel_id}/{message_id}/{uuid}.{ext}`` (protocol.md section 4)."""
    return validate_key(f"attachments/{channel_id}/{message_id}/{attachment_id}.{extension}")


def emoji_key(guild_id: str, emoji_id: str, extension: str) -> str:
    return validate_key(f"emoji/{guild_id}/{emoji_id}.{extension}")


@dataclass(frozen=True)
class StoredAttachment:
    id: str
    filename: str
    mime_type: str
    size_bytes: int
    storage_key: str


@dataclass(frozen=True)
class ReceivedUpload:
    fields: Mapping[str, str]  # the text fields, e.g. "content"
    attachments: tuple[StoredAttachment, ...]

    @property
    def content(self) -> str:
        return self.fields.get("content", "")


class _Prefixed:
    """``first`` then the rest of ``rest``: puts back a chunk read ahead to look at it."""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Prefixed:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)


class _VettedStream:
    """The sniffed head followed by the rest of a file, text re-checked as it flows past."""

    def __init__(self, head: bytes, rest: AsyncIterator[bytes] | None, checker: _TextChecker | None) -> None:
        self._head: bytes | None = head
        self._rest = rest
        self._checker = checker

    def __aiter__(self) -> _VettedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        if self._rest is None:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._rest)
        except StopAsyncIteration:
            self._rest = None
            if self._checker is not None:
                self._checker.feed(b"", final=True)
            raise
        if self._checker is not None:
            self._checker.feed(chunk)
        return chunk


async def _read_head(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, bool]:
    """At least ``size`` bytes from the start of ``chunks`` (fewer at its end), and whether it ended."""
    head = bytearray()
    while len(head) < size:
        try:
            head += await anext(chunks)
        except StopAsyncIteration:
            return bytes(head), True
    return bytes(head), False


def _new_id() -> str:
    return str(uuid.uuid4())


class UploadPlan:
    """The attachments of one message, stored all or nothing.

    Use it as an async context manager around both the upload and the database write of the
    message: if anything inside fails or is cancelled, every blob it stored is deleted (shielded)
    and the exception propagates, so there is never a message without its files nor a file without
    its message::

        async with UploadPlan(blobs, channel_id=c, message_id=m, max_file_bytes=limit) as plan:
            upload = await plan.receive(body, content_type)
            await store.messages.create(..., attachments=upload.attachments)
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        channel_id: str,
        message_id: str,
        max_file_bytes: int,
        limits: MultipartLimits = DEFAULT_LIMITS,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        for label, value in (("channel_id", channel_id), ("message_id", message_id)):
            if not _ID.match(value):
                raise ValueError(f"{label} {value!r} cannot be part of a blob key")
        if max_file_bytes <= 0:
            raise ValueError("max_file_bytes must be positive")
        self._blobs = blobs
        self._channel_id = channel_id
        self._message_id = message_id
        self._max_file_bytes = max_file_bytes
        self._limits = limits
        self._new_id = new_id
        self._written: list[str] = []
        self._attachments: list[StoredAttachment] = []

    @property
    def attachments(self) -> tuple[StoredAttachment, ...]:
        return tuple(self._attachments)

    async def add_file(self, filename: str | None, chunks: AsyncIterable[bytes]) -> StoredAttachment:
        """Sniff, vet and store one file; raise (storing nothing for it) when it is refused."""
        if len(self._attachments) >= self._limits.max_files:
            raise ValidationError(
                f"at most {self._limits.max_files} files per message", {"file": "too many files"}
            )
        source = aiter(chunks)
        head, complete = await _read_head(source, SNIFF_BYTES)
        if not head:
            raise ValidationError(f"file {sanitize_filename(filename)!r} is empty", {"file": "empty"})
        file_type = sniff(head, complete=complete)
        checker: _TextChecker | None = None
        if file_type.is_text and not complete:
            checker = _TextChecker()
            checker.feed(head)
        attachment_id = self._new_id()
        if not _ID.match(attachment_id):
            raise ValueError(f"attachment id {attachment_id!r} cannot be part of a blob key")
        key = attachment_key(self._channel_id, self._message_id, attachment_id, file_type.extension)
        name = filename_for(filename, file_type)
        # Recorded before writing: if the write is interrupted at the very end, discard still
        # tries the key (deleting a key that was never written is harmless).
        self._written.append(key)
        stream = _VettedStream(head, None if complete else source, checker)
        try:
            size = await self._blobs.put_stream(
                key, stream, file_type.mime_type, max_bytes=self._max_file_bytes
            )
        except PayloadTooLarge:
            raise PayloadTooLarge(
                f"file {name!r} is larger than {self._max_file_bytes} bytes", max_bytes=self._max_file_bytes
            ) from None
        attachment = StoredAttachment(attachment_id, name, file_type.mime_type, size, key)
        self._attachments.append(attachment)
        return attachment

    async def receive(self, body: AsyncIterable[bytes], content_type: str) -> ReceivedUpload:
        """Read a multipart body: every part with a file name is stored, the rest are text fields.

        At least one file is required (protocol.md: ``file`` 1..n plus an optional ``content``).
        """
        reader = MultipartReader(body, content_type, limits=self._limits)
        fields: dict[str, str] = {}
        async for part in reader:
            if part.filename == "":
                # A browser form sends an unused file input as an empty part with an empty name.
                first = await anext(part, None)
                if first is None:
                    continue
                await self.add_file(part.filename, _Prefixed(first, part))
            elif part.is_file:
                await self.add_file(part.filename, part)
            elif part.name in fields:
                raise ValidationError(f"form field {part.name!r} appears twice", {part.name: "duplicate"})
            else:
                fields[part.name] = await part.read_text()
        if not self._attachments:
            raise ValidationError("an upload needs at least one file", {"file": "required"})
        return ReceivedUpload(MappingProxyType(fields), self.attachments)

    async def discard(self) -> None:
        """Delete every blob this plan stored; safe to call more than once."""
        keys, self._written = self._written, []
        self._attachments.clear()
        if not keys:
            return
        # Shielded: a cancelled request must still clean up; bounded: a dead store must not hang.
        with trio.CancelScope(shield=True), trio.move_on_after(_DISCARD_TIMEOUT_S) as scope:
            await self._blobs.delete_many(keys)
        if scope.cancelled_caught:
            raise BlobError(f"timed out deleting {len(keys)} blobs of a failed upload: {keys}")

    async def __aenter__(self) -> UploadPlan:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            return
        try:
            await self.discard()
        except BlobError:
            # The original error is the one to report; the orphans are logged for an operator.
            log.exception("could not delete the blobs of a failed upload")


__all__ = [
    "ALLOWED_MIME_TYPES",
    "ALLOWED_TYPES",
    "DEFAULT_LIMITS",
    "EMOJI_MAX_BYTES",
    "EMOJI_TYPES",
    "MAX_FILENAME_CHARS",
    "SNIFF_BYTES",
    "FileType",
    "MultipartLimits",
    "MultipartReader",
    "Part",
    "ReceivedUpload",
    "StoredAttachment",
    "UploadPlan",
    "attachment_key",
    "check_emoji_image",
    "emoji_key",
    "filename_for",
    "read_emoji_image",
    "read_limited",
    "sanitize_filename",
    "sniff",
]
