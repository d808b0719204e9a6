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

`NamePolicy` is the one answer to "which names under the root may be served", shared
by every protocol that serves the root (HTTP's static site, FTP): names starting
with "." (`.env`, `.htpasswd`, `.git/`) are hidden unless `show_dotfiles`, and a path
whose *resolved* target leaves the root is refused unless `follow_symlinks`.  The
resolved target is judged as strictly as the name asked for: a symlink `env.txt ->
.env` inside the root does not make the dotfile servable under another name.
`check_open` judges an already open descriptor by the kernel's own name for it
(/proc/self/fd), which leaves no window between the check and the use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UnsafePath", "HiddenName", "NamePolicy", "virtual_parts", "confine"]


class UnsafePath(ValueError):
    """The path would leave the root, or contains bytes no file name may contain."""


class HiddenName(UnsafePath):
    """The path names (or leads to) a dotfile, and dotfiles are not served."""


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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


@dataclass(frozen=True)
class NamePolicy:
    """Which names under a root may be served, listed or written.

    `show_dotfiles`: serve names starting with "." (default: hidden, refused).
    `follow_symlinks`: serve symlinks whose target leaves the root (default: refused).
    Write access never follows links out of the root: callers that create, replace
    or delete pass `write=True`.
    """

    show_dotfiles: bool = False
    follow_symlinks: bool = False

    def hidden(self, name: str) -> bool:
        """True for a single name the policy hides (a dotfile, unless shown)."""
        return not self.show_dotfiles and _is_hidden(name)

    def check_parts(self, parts: list[str]) -> None:
        """Refuse (HiddenName) a virtual path with a hidden component."""
        if not self.show_dotfiles and any(_is_hidden(part) for part in parts):
            raise HiddenName("names starting with '.' are not served")

    def check_real(self, root: Path, real: str, *, write: bool = False) -> None:
        """Judge a resolved path: inside the root (unless followed), no hidden part inside it."""
        root_text = str(root)
        if real == root_text:
            return
        if not real.startswith(root_text.rstrip(os.sep) + os.sep):
            if self.follow_symlinks and not write:
                return
            raise UnsafePath("resolves outside the root")
        self.check_parts(real[len(root_text):].split(os.sep))

    def locate(self, root: Path, parts: list[str], *, write: bool = False) -> Path:
        """`confine` plus the name rules: the path to use for `parts` under `root`.

        `root` must be resolved.  The name asked for and, for what exists of it, the
        resolved target are both judged.  Raises HiddenName or UnsafePath.
        """
        self.check_parts(parts)
        follow = self.follow_symlinks and not write
        candidate = confine(root, parts, follow_outside_links=follow)
        probe = candidate
        while True:           # the nearest existing ancestor: what the name leads to
            try:
                real = os.path.realpath(probe, strict=True)
                break
            except (FileNotFoundError, NotADirectoryError):
                if probe == root:
                    return candidate
                probe = probe.parent
            except OSError as exc:
                raise UnsafePath(str(exc)) from exc
        self.check_real(root, real, write=write)
        return candidate

    def visible(self, root: Path, entry: os.DirEntry) -> bool:
        """Whether a directory entry belongs in a listing of the root's tree."""
        if self.hidden(entry.name):
            return False
        if not entry.is_symlink():
            return True
        try:
            self.check_real(root, os.path.realpath(entry.path, strict=True))
        except (OSError, UnsafePath):
            return False      # dangling, looping, out of the root or onto a dotfile
        return True

    def check_open(self, root: Path, fd: int, path: str | os.PathLike) -> None:
        """Judge an open descriptor by where it really leads (no check-then-use race)."""
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = os.path.realpath(path)
        self.check_real(root, real)
