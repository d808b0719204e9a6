"""Byte ranges (RFC 9110 §14): parse a Range header, answer with file regions.

Theory of operation: a Range header is parsed against the size of the selected
representation into one of three answers — `None` (ignore it and send the whole
representation with 200), `UNSATISFIABLE` (416 with `Content-Range: bytes */SIZE`), or
a list of inclusive (first, last) pairs.  The payload of a 206 is then *slices*, not
bytes: one FileRegion for a single range; for several ranges, the multipart framing
(boundary lines and part headers, small `bytes`) interleaved with FileRegions of the
file, so the body is never assembled in memory and the transmitter gathers the
framing and sendfiles (or maps) the file parts.

Defences, after nginx and Starlette: more than `MAX_RANGES` ranges, or ranges whose
lengths add up to more than the representation itself (the overlap trick that turns
one request into gigabytes of output), make us ignore the header and send 200 once.
Overlapping and adjacent ranges are coalesced after an O(n log n) sort, and the
parts keep the order the client asked for (RFC 9110 §14.6) — Starlette's O(n²)
merging was CVE-2025-62727.  Syntactically invalid headers are ignored, as the RFC
requires; so is a Range on an empty representation that only a suffix could match,
because a zero-length part has no Content-Range spelling (RFC 9110 §14.1.1/§14.4).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence

from ..core.message import FileRegion, Slice

__all__ = ["parse_range", "coalesce", "UNSATISFIABLE", "MAX_RANGES", "content_range",
           "multipart_slices", "new_boundary"]

MAX_RANGES = 100


class _Unsatisfiable:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE = _Unsatisfiable()

Range = tuple[int, int]       # inclusive first and last byte positions

_DIGITS = frozenset(b"0123456789")


def _number(text: bytes) -> int | None:
    # 1*DIGIT only: no sign, no spaces, no "0x", no underscores (int() accepts those).
    if not text or not _DIGITS.issuperset(text):
        return None
    return int(text)


def parse_range(header: bytes, size: int) -> list[Range] | _Unsatisfiable | None:
    """Resolve a Range header against a representation of `size` bytes."""
    unit, eq, spec = header.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None                               # another unit, or garbage: ignore
    members = spec.split(b",")
    if len(members) > MAX_RANGES:
        return None
    wanted: list[Range] = []
    total = 0
    seen_valid = False
    for member in members:
        member = member.strip(b" \t")
        if not member:
            continue                              # "1#" lists allow empty elements
        first_text, dash, last_text = member.partition(b"-")
        if not dash:
            return None
        if first_text:
            first = _number(first_text)
            last = _number(last_text) if last_text else size - 1
            if first is None or last is None or (last_text and last < first):
                return None                       # invalid spec: ignore the header
            seen_valid = True
            if first >= size:
                continue                          # valid but unsatisfiable member
            last = min(last, size - 1)
        else:
            suffix = _number(last_text)
            if suffix is None:
                return None
            seen_valid = True
            if suffix == 0:
                continue
            if size == 0:
                return None                       # only an empty part would fit: 200
            first, last = max(0, size - suffix), size - 1
        wanted.append((first, last))
        total += last - first + 1
        if total > size:
            return None                           # overlap abuse: one full 200 instead
    if not seen_valid:
        return None
    if not wanted:
        return UNSATISFIABLE
    return coalesce(wanted)


def coalesce(ranges: Sequence[Range]) -> list[Range]:
    """Merge overlapping or adjacent ranges; keep the order of first appearance."""
    if len(ranges) < 2:
        return list(ranges)
    order = sorted(range(len(ranges)), key=lambda i: ranges[i])
    merged: list[tuple[int, int, int]] = []       # (first, last, earliest request index)
    for i in order:
        first, last = ranges[i]
        if merged and first <= merged[-1][1] + 1:
            m_first, m_last, m_index = merged[-1]
            merged[-1] = (m_first, max(m_last, last), min(m_index, i))
        else:
            merged.append((first, last, i))
    merged.sort(key=lambda m: m[2])
    return [(first, last) for first, last, _index in merged]


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"


_boundary_prefix = secrets.token_hex(8)
_boundary_counter = itertools.count(1)


def new_boundary() -> str:
    """A boundary unlikely to occur in any file: random per process, counted per reply."""
    return f"pageloan-{_boundary_prefix}-{next(_boundary_counter):x}"


def multipart_slices(fd: int, owner: object, ranges: Sequence[Range], size: int,
                     content_type: str, boundary: str) -> tuple[list[Slice], int]:
    """The multipart/byteranges body as slices, and its exact length.

    Wire format (RFC 9110 §14.6, RFC 2046 §5.1.1): each part is a delimiter line,
    the part's Content-Type and Content-Range, a blank line and the bytes; every
    delimiter after the first is preceded by the CRLF that ends the previous part's
    data; the close delimiter ends with `--` and a final CRLF.
    """
    slices: list[Slice] = []
    length = 0
    type_line = f"Content-Type: {content_type}\r\n"
    for index, (first, last) in enumerate(ranges):
        head = (("\r\n" if index else "") + f"--{boundary}\r\n" + type_line
                + f"Content-Range: {content_range(first, last, size)}\r\n\r\n").encode("latin-1")
        count = last - first + 1
        slices.append(head)
        slices.append(FileRegion(fd, first, count, owner))
        length += len(head) + count
    tail = f"\r\n--{boundary}--\r\n".encode("latin-1")
    slices.append(tail)
    return slices, length + len(tail)
