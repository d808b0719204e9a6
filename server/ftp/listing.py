"""Directory listings in the two forms clients parse: `ls -l` lines and MLSx facts.

Theory of operation: LIST has no standard format, so stock clients (lftp, curl,
browsers, ftplib users) all parse the one `/bin/ls -l` prints:
`mode links owner group size month day time-or-year name`.  We print exactly that,
with a fixed owner/group ("ftp": real account names are none of the client's
business) and times in UTC, the same clock as MDTM and MLSx.  Like ls, a date more
than six months away shows the year instead of the time.  MLSD/MLST (RFC 3659) are
the machine-readable form: `fact=value;...; name`, with the set of facts chosen by
OPTS MLST.

What a listing hides: uploads in progress (receive.py's temporary names), entries
whose names cannot be written on one line (CR or LF), and whatever the root's
NamePolicy would refuse to serve — dotfiles (unless shown), symlinks that lead out
of the root (unless followed), onto a dotfile or nowhere: the client could not open
them anyway, so they do not exist in its view.  Listings are small text built off the event loop (a directory may be
large and stat() may touch the disk) and sent as one bytes payload.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from pathlib import Path

from ..core.receive import is_partial_name
from ..core.safepath import NamePolicy

__all__ = ["Entry", "scan", "render_list", "render_names", "render_mlsd", "mlsx_line",
           "ALL_FACTS", "DEFAULT_FACTS", "has_glob"]

ALL_FACTS = ("type", "size", "modify", "perm", "unique")
DEFAULT_FACTS = ALL_FACTS
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIX_MONTHS = 182 * 24 * 3600

Entry = tuple[str, os.stat_result]


def has_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def scan(directory: Path, root: Path, policy: NamePolicy, pattern: str | None = None) -> list[Entry]:
    """Visible entries of `directory`, sorted by name, symlinks followed."""
    entries: list[Entry] = []
    with os.scandir(directory) as it:
        for item in it:
            name = item.name
            if is_partial_name(name) or "\r" in name or "\n" in name:
                continue
            if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
                continue
            try:
                if not policy.visible(root, item):
                    continue
                entries.append((name, item.stat()))
            except OSError:
                continue     # dangling link or vanished meanwhile
    entries.sort(key=lambda e: e[0])
    return entries


def _ls_date(mtime: float, now: float) -> str:
    t = time.gmtime(mtime)
    month = _MONTHS[t.tm_mon - 1]
    if abs(now - mtime) > _SIX_MONTHS:
        return f"{month} {t.tm_mday:2d}  {t.tm_year}"
    return f"{month} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"


def ls_line(name: str, st: os.stat_result, now: float) -> str:
    return (f"{stat.filemode(st.st_mode)} {st.st_nlink:3d} ftp      ftp      "
            f"{st.st_size:13d} {_ls_date(st.st_mtime, now)} {name}")


def _encode(lines: list[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape")


def render_list(entries: list[Entry]) -> bytes:
    now = time.time()
    return _encode([ls_line(name, st, now) for name, st in entries])


def render_names(entries: list[Entry]) -> bytes:
    return _encode([name for name, _st in entries])


def modify_fact(st: os.stat_result) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(st.st_mtime))


def _perm(st: os.stat_result, writable: bool) -> str:
    if stat.S_ISDIR(st.st_mode):
        # e: enter, l: list; c/m/p: create file, make dir, purge; d/f: delete, rename
        return "elcdfmp" if writable else "el"
    # r: retrieve; a/w: append, store; d/f: delete, rename
    return "radfw" if writable else "r"


def mlsx_line(name: str, st: os.stat_result, writable: bool, facts: tuple[str, ...]) -> str:
    """`fact=value;...; name` (RFC 3659 §7.2) for the facts selected."""
    is_dir = stat.S_ISDIR(st.st_mode)
    values = {
        "type": "dir" if is_dir else "file",
        "size": str(st.st_size),
        "modify": modify_fact(st),
        "perm": _perm(st, writable),
        "unique": f"{st.st_dev:x}g{st.st_ino:x}",
    }
    return "".join(f"{f}={values[f]};" for f in facts) + " " + name


def render_mlsd(entries: list[Entry], writable: bool, facts: tuple[str, ...]) -> bytes:
    return _encode([mlsx_line(name, st, writable, facts) for name, st in entries])
