"""Receive uploaded images safely: a streamed multipart body, capped in size, typed by content, on disk only
inside the request's own temporary directory.

Why not FastAPI's `UploadFile`: Starlette parses the whole body before the endpoint runs, so a size cap could
only be checked after the bytes were received. Here the body is read chunk by chunk (`request.stream()`), the
running total is checked on every chunk, and the same multipart parser Starlette uses (`python_multipart`)
writes each file part straight into `upload-<i>` inside a folder the caller deletes after the request. The
client's file name is kept for display only; it never becomes part of a path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import AsyncIterator, BinaryIO, Mapping

# What each accepted type starts with. DICOM: the 128-byte preamble then "DICM" (PS3.10 section 7.1).
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
SNIFF_BYTES = 132
ACCEPTED = "DICOM (with the DICM preamble), PNG or JPEG"


class UploadError(Exception):
    """A request the client must fix; `status` is the HTTP status to answer with (400, 408, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """One received file: `filename` as the client named it (display only), `path` inside the request folder."""

    filename: str
    path: Path
    kind: str  # dicom | png | jpeg
    size: int


def sniff(head: bytes) -> str | None:
    """The file type from its first bytes, or None when it is none of the accepted ones."""
    if len(head) >= SNIFF_BYTES and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def display_name(raw: str, index: int) -> str:
    """The last component of a client file name (browsers may send full paths), printable, at most 120 chars."""
    base = PureWindowsPath(PurePosixPath(raw).name).name
    clean = "".join(c for c in base if c.isprintable()).strip()
    return (clean or f"file-{index + 1}")[:120]


@dataclass
class _Part:
    filename: str | None = None
    handle: BinaryIO | None = None
    path: Path | None = None
    head: bytearray = field(default_factory=bytearray)
    kind: str | None = None
    size: int = 0


class _Collector:
    """python_multipart callbacks: headers -> new part; data -> sniff the first bytes, then write to disk."""

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder = folder
        self.max_files = max_files
        self.uploads: list[Upload] = []
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._add("header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("header_value", d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_end(self) -> None:
        if self.header_name.strip().lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.disposition)
        if b"filename" not in options:
            return  # a plain form field: its bytes count toward the cap and are dropped
        index = len(self.uploads)
        if index >= self.max_files:
            raise UploadError(400, f"too many files in one request (at most {self.max_files})")
        self.part.filename = display_name(options[b"filename"].decode("utf-8", "replace"), index)
        self.part.path = self.folder / f"upload-{index:03d}"
        # "xb": never follow or overwrite an existing file; others cannot read it (mkdtemp's folder is 0700)
        self.part.handle = open(self.part.path, "xb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if part.handle is None:
            return
        chunk = data[start:end]
        if part.kind is None:
            part.head += chunk[: SNIFF_BYTES - len(part.head)]
            if len(part.head) >= SNIFF_BYTES:
                self._check_type(part)
        part.handle.write(chunk)  # local-disk writes of <=64 KiB chunks: cheap enough for the event loop
        part.size += len(chunk)

    def on_part_end(self) -> None:
        part = self.part
        if part.handle is None:
            return
        part.handle.close()
        if part.size == 0:
            raise UploadError(400, f"{part.filename}: empty file")
        if part.kind is None:
            self._check_type(part)
        self.uploads.append(Upload(filename=part.filename or "", path=part.path, kind=part.kind or "", size=part.size))
        self.part = _Part()

    def _check_type(self, part: _Part) -> None:
        part.kind = sniff(bytes(part.head))
        if part.kind is None:
            raise UploadError(415, f"{part.filename}: unsupported file type; expected {ACCEPTED} (checked from "
                                   f"the file's content, not its name)")

    def close(self) -> None:
        if self.part.handle is not None and not self.part.handle.closed:
            self.part.handle.close()


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data` body; 415 for any other body type."""
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(415, "send the images as multipart/form-data (for example: curl -F files=@image.dcm ...)")
    if not params.get(b"boundary"):
        raise UploadError(400, "multipart/form-data without a boundary")
    return params[b"boundary"]


async def receive_uploads(headers: Mapping[str, str], stream: AsyncIterator[bytes], folder: Path,
                          max_bytes: int, max_files: int, timeout_s: float | None = None) -> list[Upload]:
    """Parse a multipart body from `stream` into files under `folder`, stopping with 413 past `max_bytes`
    and with 408 when the whole body has not arrived within `timeout_s` seconds (None: no deadline).

    `headers` is the request's (case-insensitive) header mapping. The declared Content-Length is checked
    first, so an honest client that is over the cap is refused before one byte is read; chunked bodies are
    counted as they arrive.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    boundary = multipart_boundary(headers.get("content-type"))
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, too_large(max_bytes))
    collector = _Collector(folder, max_files)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in within_deadline(stream, timeout_s):
            received += len(chunk)
            if received > max_bytes:
                raise UploadError(413, too_large(max_bytes))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise UploadError(400, f"malformed multipart body ({err})") from None
    finally:
        collector.close()
    return collector.uploads


async def within_deadline(stream: AsyncIterator[bytes], timeout_s: float | None) -> AsyncIterator[bytes]:
    """The chunks of `stream`, raising `UploadError(408)` once `timeout_s` seconds have passed since reading
    began.

    Why here: uvicorn times out idle keep-alive connections but not a request body that stops arriving, so a
    client that sends half a body and stalls would hold its temporary folder (and a connection) for ever.
    A deadline on the whole body, not on each read, also stops a client that drips one byte at a time.
    """
    if timeout_s is None:
        async for chunk in stream:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadError(408, f"upload timed out: the request body did not arrive within {timeout_s:g} s "
                                   f"(server option --upload-timeout)") from None
        yield chunk


def too_large(max_bytes: int) -> str:
    return f"upload too large: the limit is {max_bytes / 2**20:g} MiB per request (server option --max-upload-mb)"
