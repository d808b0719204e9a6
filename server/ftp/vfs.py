"""The client's view of the file system: a virtual "/" that is the served root.

Theory of operation: a session keeps its working directory as a list of *virtual*
components, never as a real path.  A client path is resolved in three steps:

1. lexically, in the virtual namespace: absolute paths start at "/", relative ones at
   the working directory; "." is dropped and ".." removes one component.  A ".."
   that would climb above "/" is refused (`CWD ..` at the root, `/../..`, `a/../../x`)
   rather than silently clamped, so a client learns it asked for something outside;
2. the components go through `safepath.virtual_parts` (NUL and backslash refused);
3. the served root's `NamePolicy` (the same rules HTTP's static site follows)
   refuses dotfile components (`.env`, `.git/config`) unless dotfiles are shown,
   joins the components to the root and checks that the *resolved* result —
   symlinks followed — is still inside it and is not a dotfile either, so a link
   pointing out of the tree (or onto `.htpasswd`) is refused as if it were "..".
   Links out of the root are followed for reading only when the policy says so
   (`--follow-symlinks`); anything that writes (`write=True`) never goes through one.

Doing ".." lexically means "/link/.." is "/" whatever the link points at: the client
moves through the names it sees, never through the real tree behind a link.

Uploads in progress (receive.py's temporary names) are not in the client's view at
all: such a name resolves as "no such file", so nobody can fetch, rename or delete
another session's half-written upload, or create a file that looks like one.
"""

from __future__ import annotations

import errno
from pathlib import Path

from ..core.receive import is_partial_name
from ..core.safepath import NamePolicy, UnsafePath, virtual_parts

__all__ = ["VirtualFS", "UnsafePath"]


class VirtualFS:
    """A root directory, the rules for names under it, and a virtual working directory."""

    def __init__(self, root: Path, policy: NamePolicy | None = None) -> None:
        self.root = root            # resolved by FtpConfig
        self.policy = policy or NamePolicy()
        self.cwd: list[str] = []

    def parts_of(self, client_path: str) -> list[str]:
        """Virtual components of `client_path` relative to the working directory."""
        parts = [] if client_path.startswith("/") else list(self.cwd)
        for part in client_path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise UnsafePath("'..' above the root")
                parts.pop()
            elif is_partial_name(part):
                raise FileNotFoundError(errno.ENOENT, "upload in progress", part)
            else:
                parts.append(part)
        # Second fence: the shared checker refuses NUL, backslash and any ".." left.
        return virtual_parts("/".join(parts))

    def resolve(self, client_path: str, *, write: bool = False) -> tuple[list[str], Path]:
        """(virtual parts, real path) of `client_path`, confined to the root.

        Raises HiddenName (a dotfile) or UnsafePath (outside the root) — both 550.
        """
        parts = self.parts_of(client_path)
        return parts, self.policy.locate(self.root, parts, write=write)

    @staticmethod
    def display(parts: list[str]) -> str:
        return "/" + "/".join(parts)

    def pwd(self) -> str:
        return self.display(self.cwd)
