"""The deterministic document root every server serves in a run.

Sized files (`1k.bin` ... `256m.bin`) hold a fixed pseudo-random pattern, so no server
can gain from compression and every run serves the same bytes; a small multi-page site
(html, css, js, a real PNG) stands in for a typical static site. The root lives in a
cache directory and is reused; the 256 MiB file is written only when a scenario asks.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

SIZED_FILES: dict[str, int] = {
    "1k.bin": 1024,
    "64k.bin": 64 * 1024,
    "1m.bin": 1024 * 1024,
    "256m.bin": 256 * 1024 * 1024,
}
SITE_PAGES: tuple[str, ...] = ("index.html", "about.html", "style.css", "app.js", "logo.png")
TEXT_FILE = "text-48k.txt"     # compressible text for the browser-br scenario
# The version is part of the directory name: change the content, bump the name.
DEFAULT_DOCROOT = Path.home() / ".cache" / "pageloan-loadtest" / "docroot-v1"
_BLOCK = 64 * 1024


def pattern_block() -> bytes:
    """64 KiB of fixed, incompressible bytes (SHA-256 in counter mode)."""
    digests = (hashlib.sha256(b"pageloan-%d" % i).digest() for i in range(_BLOCK // 32))
    return b"".join(digests)


def build_docroot(root: Path, with_big: bool = False) -> Path:
    """Create (or complete) the document root and return it."""
    root.mkdir(parents=True, exist_ok=True)
    block = pattern_block()
    for name, size in SIZED_FILES.items():
        if name == "256m.bin" and not with_big:
            continue
        _write_if_needed(root / name, size, block)
    for name, content in {**site_files(), TEXT_FILE: text_file()}.items():
        path = root / name
        if not path.exists() or path.read_bytes() != content:
            _atomic_write(path, [content])
    return root


def _write_if_needed(path: Path, size: int, block: bytes) -> None:
    if path.exists() and path.stat().st_size == size:
        with path.open("rb") as f:
            if f.read(min(size, _BLOCK)) == block[: min(size, _BLOCK)]:
                return
    full, rest = divmod(size, _BLOCK)
    _atomic_write(path, [block] * full + [block[:rest]])


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


def site_files() -> dict[str, bytes]:
    """The small site: five files of typical sizes (a few KiB each)."""
    nav = "".join(f'<li><a href="/{p}">{p}</a></li>' for p in ("index.html", "about.html"))
    para = "<p>" + "A static page served from disk by a small benchmark site. " * 8 + "</p>\n"
    def page(title: str, paragraphs: int) -> bytes:
        return (
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><link rel=\"stylesheet\" href=\"/style.css\">"
            "<script src=\"/app.js\" defer></script></head>\n<body>"
            f"<img src=\"/logo.png\" alt=\"logo\"><ul>{nav}</ul>\n<h1>{title}</h1>\n"
            + para * paragraphs + "</body></html>\n"
        ).encode()
    css = "".join(
        f".block-{i} {{ margin: {i % 7}px; padding: {i % 5}px; color: #{i * 4099 % 0xFFFFFF:06x}; }}\n"
        for i in range(60)
    ).encode()
    js = "".join(
        f"function step{i}(x) {{ return (x * {i + 3}) % {i + 11}; }}\n" for i in range(200)
    ).encode()
    return {
        "index.html": page("Home", 12),
        "about.html": page("About", 6),
        "style.css": css,
        "app.js": js,
        "logo.png": png_image(64, 64),
    }


def text_file(size: int = 48 * 1024) -> bytes:
    """Deterministic English-like text of `size` bytes: compresses about as an article does."""
    words = ("the server lends pages to the kernel which sends them without a copy while "
             "python only arranges slices of headers files and memory so that each answer "
             "leaves in one gather call and nothing is read twice").split()
    state, out, length = 12345, [], 0
    while length < size:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF     # a fixed LCG: same bytes every run
        word = words[state % len(words)]
        if state % 13 == 0:
            word += ".\n" if state % 3 == 0 else ","
        out.append(word)
        length += len(word) + 1
    return " ".join(out).encode()[:size]


def png_image(width: int, height: int) -> bytes:
    """A valid RGB PNG with a fixed gradient (noise-free, so it compresses like a logo)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, x * y % 256)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
