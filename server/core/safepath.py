"""Confinement of client-supplied paths to a served root.

Theory of operation: a client path is first *normalised as a virtual path* — split on
"/", with "." dropped and ".." refused outright (a client has no business walking up,
and refusing is clearer than clamping) — and only then joined to the root.  The
joined path is resolved (symlinks followed) and must still lie inside the resolved
root, unless the caller allows symlinks that leave it.  Checking containment on the
*resolved* path, by path components and not by string prefix, is what closes the
classic holes (`/static/../static1.txt` passing a `commonprefix` test, symlinks
pointing out of the tree).

Callers that decode URLs (percent-encoding, UTF-8) do so before calling here and
refuse NUL and backslashes there; this module refuses them too, as a second fence.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["UnsafePath", "virtual_parts", "confine"]


class UnsafePath(ValueError):
    """The path would leave the root, or contains bytes no file name may contain."""


def virtual_parts(path: str) -> list[str]:
    """Split a client path into safe components; refuse traversal and odd bytes."""
    if "\x00" in path or "\\" in path:
        raise UnsafePath("NUL or backslash in path")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafePath("'..' in path")
        parts.append(part)
    return parts


def confine(root: Path, parts: list[str], *, follow_outside_links: bool = False) -> Path:
    """Join `parts` to `root` and check that the result stays inside it.

    `root` must already be resolved (absolute, no symlinks).  Returns the joined path
    (not the resolved one, so that callers see the name the client asked for).  The
    target need not exist; if it does not, its nearest existing parent is checked.
    """
    candidate = root.joinpath(*parts)
    if follow_outside_links:
        return candidate
    probe = candidate
    while True:
        try:
            real = Path(os.path.realpath(probe, strict=True))
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe == root:
                return candidate
            probe = probe.parent
        except OSError as exc:   # loops, permission: treat as unsafe rather than crash
            raise UnsafePath(str(exc)) from exc
    if real != root and root not in real.parents:
        raise UnsafePath("resolves outside the root")
    return candidate
