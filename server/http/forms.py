"""HTML form bodies: application/x-www-form-urlencoded and multipart/form-data.

Theory of operation.  `parse_form(content_type, chunks)` feeds the request body, as
it arrives, to python-multipart's streaming parsers (the parser Starlette uses; a
sans-I/O state machine we do not write by hand) and collects their callbacks into a
`FormData`: text fields as `str`, file parts as `UploadFile`s.

File parts never sit whole in memory.  Their bytes are memoryviews into the body
chunks the parser was given (no copy), queued per part and written out to a
temporary file between two chunks, in a worker thread when a batch is big enough
that a disk write could stall the loop; memory is one body chunk plus one batch.  A
file part's temporary lives in `upload_dir` (the system's temporary directory by
default) under a hidden partial-file name, so `UploadFile.save(dest)` in the same
file system is a rename, and a directory listing does not show it.  Temporary files
are removed by `FormData.close()`, by `UploadFile.save` (they become the saved file),
or when the objects are garbage (a finaliser), so an abandoned request leaves none.

Limits answer 413 (`max_fields` fields and files, `max_files` files, `max_part_size`
bytes of one text field, `max_file_size` bytes of one file); a body the parser
cannot read, a multipart type without a boundary, or a part without a name answers
400; a body that is not a form at all answers 415.  The body as a whole is bounded
by the server's body limit, before any of this.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import (
    MultipartParser,
    MultipartState,
    QuerystringParser,
    parse_options_header,
)

from ..core.receive import PARTIAL_MARK, PARTIAL_SUFFIX
from .errors import HTTPError

__all__ = ["FormData", "UploadFile", "parse_form", "FormLimits"]

WRITE_BATCH = 256 << 10          # file bytes gathered before one write
THREAD_WRITE_ABOVE = 64 << 10    # smaller writes go straight to the page cache


class FormLimits:
    """How much of a form one request may send (each over-limit answer is a 413)."""

    __slots__ = ("max_fields", "max_files", "max_part_size", "max_file_size")

    def __init__(self, max_fields: int = 1000, max_files: int = 1000,
                 max_part_size: int = 1 << 20, max_file_size: int | None = None) -> None:
        self.max_fields = max_fields
        self.max_files = max_files
        self.max_part_size = max_part_size
        self.max_file_size = max_file_size


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class UploadFile:
    """One file part of a multipart form, spooled to a temporary file on disk."""

    def __init__(self, filename: str, content_type: str, headers: dict[str, str],
                 directory: str) -> None:
        self.filename = filename
        self.content_type = content_type
        self.headers = headers
        self.size = 0
        fd, path = tempfile.mkstemp(prefix=f".upload{PARTIAL_MARK}{secrets.token_hex(4)}",
                                    suffix=PARTIAL_SUFFIX, dir=directory)
        self.path: Path = Path(path)
        self._fd = fd
        self._finalizer = weakref.finalize(self, _remove, path)

    # -- filled by the parser ---------------------------------------------------------
    def _write(self, views: list[memoryview]) -> None:
        while views:
            written = os.writev(self._fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def _finish(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- for the handler ----------------------------------------------------------------
    async def read(self) -> bytes:
        """The whole file (it is on disk: mind its size before reading it into memory)."""
        return await asyncio.to_thread(self.path.read_bytes)

    def open(self) -> Any:
        """The temporary file, open for reading (binary)."""
        return open(self.path, "rb")

    async def save(self, dest: os.PathLike | str) -> Path:
        """Move the file to `dest` (a rename when on the same file system, else a copy
        into a temporary sibling renamed into place); returns `dest`."""
        dest = Path(dest)
        self._finish()

        def move() -> None:
            try:
                os.replace(self.path, dest)
            except OSError:
                temp = dest.with_name(f".{dest.name}{PARTIAL_MARK}{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
                try:
                    shutil.copyfile(self.path, temp)
                    os.replace(temp, dest)
                except BaseException:
                    _remove(str(temp))
                    raise
                _remove(str(self.path))

        await asyncio.to_thread(move)
        self._finalizer.detach()
        return dest

    def close(self) -> None:
        """Remove the temporary file (nothing happens if it was saved)."""
        self._finish()
        self._finalizer()

    def __repr__(self) -> str:
        return f"UploadFile({self.filename!r}, {self.content_type!r}, {self.size} bytes)"


class FormData:
    """The fields of a form, in order; a name may repeat.  `form["name"]` is the first
    value, `form.getall("name")` all of them; file parts are UploadFiles."""

    def __init__(self, items: list[tuple[str, str | UploadFile]] | None = None) -> None:
        self._items = items if items is not None else []

    def __getitem__(self, name: str) -> str | UploadFile:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def getall(self, name: str) -> list[str | UploadFile]:
        return [value for key, value in self._items if key == name]

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self._items)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(key for key, _ in self._items))

    def items(self) -> list[tuple[str, str | UploadFile]]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)

    @property
    def files(self) -> list[UploadFile]:
        return [value for _, value in self._items if isinstance(value, UploadFile)]

    def close(self) -> None:
        """Remove every file part's temporary file."""
        for upload in self.files:
            upload.close()

    def __enter__(self) -> FormData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FormData({self._items!r})"


async def parse_form(content_type: str | None, chunks: AsyncIterable[bytes], *,
                     limits: FormLimits | None = None,
                     upload_dir: os.PathLike | str | None = None) -> FormData:
    """Parse a form body arriving as `chunks` (see the module comment)."""
    limits = limits or FormLimits()
    kind, params = parse_options_header(content_type or "")
    if kind == b"application/x-www-form-urlencoded":
        return await _urlencoded(chunks, limits)
    if kind == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise HTTPError(400, "multipart/form-data without a boundary")
        directory = os.fspath(upload_dir) if upload_dir is not None else tempfile.gettempdir()
        return await _multipart(boundary, chunks, limits, directory)
    raise HTTPError(415, "expected a form (application/x-www-form-urlencoded or multipart/form-data)")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


async def _urlencoded(chunks: AsyncIterable[bytes], limits: FormLimits) -> FormData:
    items: list[tuple[str, str | UploadFile]] = []
    name = bytearray()
    value = bytearray()
    sizes = [0]

    def on_field_start() -> None:
        name.clear()
        value.clear()
        sizes[0] = 0
        if len(items) >= limits.max_fields:
            raise HTTPError(413, f"more than {limits.max_fields} form fields")

    def on_field_name(data: bytes, start: int, end: int) -> None:
        name.extend(data[start:end])

    def on_field_data(data: bytes, start: int, end: int) -> None:
        sizes[0] += end - start
        if sizes[0] > limits.max_part_size:
            raise HTTPError(413, f"a form field is over {limits.max_part_size} bytes")
        value.extend(data[start:end])

    def on_field_end() -> None:
        # The parser hands over raw bytes: "+" is a space, %XX an octet (WHATWG).
        items.append((_text(unquote_to_bytes(bytes(name).replace(b"+", b" "))),
                      _text(unquote_to_bytes(bytes(value).replace(b"+", b" ")))))

    parser = QuerystringParser({"on_field_start": on_field_start, "on_field_name": on_field_name,
                                "on_field_data": on_field_data, "on_field_end": on_field_end})
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise HTTPError(400, f"malformed form body ({exc})") from None
    return FormData(items)


class _Part:
    __slots__ = ("headers", "name", "upload", "text", "pending", "pending_bytes", "size")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.name = ""
        self.upload: UploadFile | None = None
        self.text = bytearray()
        self.pending: list[memoryview] = []
        self.pending_bytes = 0
        self.size = 0


async def _multipart(boundary: bytes, chunks: AsyncIterable[bytes], limits: FormLimits,
                     directory: str) -> FormData:
    items: list[tuple[str, str | UploadFile]] = []
    state: dict[str, Any] = {"part": None, "field": b"", "value": b"", "files": 0, "parts": 0}
    finished: list[_Part] = []          # file parts whose last bytes still wait to be written

    def on_part_begin() -> None:
        state["parts"] += 1
        if state["parts"] > limits.max_fields:
            raise HTTPError(413, f"more than {limits.max_fields} form parts")
        state["part"] = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        part: _Part = state["part"]
        part.headers[state["field"].decode("latin-1").lower()] = state["value"].decode("utf-8", "replace")
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        part: _Part = state["part"]
        disposition, options = parse_options_header(part.headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise HTTPError(400, "a multipart part without Content-Disposition: form-data; name=...")
        part.name = _text(options[b"name"])
        if b"filename" in options:
            state["files"] += 1
            if state["files"] > limits.max_files:
                raise HTTPError(413, f"more than {limits.max_files} files")
            # Only the last path component: some clients send the whole local path.
            filename = _text(options[b"filename"]).replace("\\", "/").rsplit("/", 1)[-1]
            part.upload = UploadFile(filename, part.headers.get("content-type", "application/octet-stream"),
                                     part.headers, directory)
            items.append((part.name, part.upload))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part: _Part = state["part"]
        size = end - start
        part.size += size
        if part.upload is not None:
            if limits.max_file_size is not None and part.size > limits.max_file_size:
                raise HTTPError(413, f"file {part.upload.filename!r} is over {limits.max_file_size} bytes")
            part.pending.append(memoryview(data)[start:end])     # a view, not a copy
            part.pending_bytes += size
        else:
            if part.size > limits.max_part_size:
                raise HTTPError(413, f"form field {part.name!r} is over {limits.max_part_size} bytes")
            part.text.extend(memoryview(data)[start:end])

    def on_part_end() -> None:
        part: _Part = state["part"]
        state["part"] = None
        if part.upload is not None:
            finished.append(part)
        else:
            items.append((part.name, _text(bytes(part.text))))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})

    async def write_out(part: _Part, everything: bool) -> None:
        if not part.pending or (not everything and part.pending_bytes < WRITE_BATCH):
            return
        views, part.pending, nbytes, part.pending_bytes = part.pending, [], part.pending_bytes, 0
        upload = part.upload
        assert upload is not None
        upload.size += nbytes
        if nbytes > THREAD_WRITE_ABOVE:
            await asyncio.to_thread(upload._write, views)
        else:
            upload._write(views)

    form = FormData(items)
    try:
        async for chunk in chunks:
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise HTTPError(400, f"malformed multipart body ({exc})") from None
            # Between two chunks: write what the parser handed over for file parts.
            while finished:
                part = finished.pop(0)
                await write_out(part, True)
                assert part.upload is not None
                part.upload._finish()
            current: _Part | None = state["part"]
            if current is not None and current.upload is not None:
                await write_out(current, False)
        try:
            parser.finalize()
        except FormParserError as exc:
            raise HTTPError(400, f"malformed multipart body ({exc})") from None
        if state["part"] is not None or parser.state != MultipartState.END:
            raise HTTPError(400, "multipart body ended before its closing boundary")
    except BaseException:
        form.close()
        raise
    return form

