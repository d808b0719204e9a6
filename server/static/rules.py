"""Site rules: redirects, rewrites, basic auth, CORS, SPA fallback and OPTIONS for a root.

Theory of operation.  What nginx puts in `location` blocks and Caddy in its site
block, for a static root: `RuleSpec` is the configuration (plain frozen data, from
flags or the config file); `SiteRules` is its compiled form, installed in front of a
StaticSite's `respond` (`SiteRules.install`).  A site with no rules gets nothing
installed, so it pays nothing at all.

Every decision that depends only on the path is made once per raw path and kept
(`_Plan`, in a bounded dict keyed by the request's raw path bytes): so a request
costs one dictionary lookup to learn whether it is redirected, rewritten, guarded
by a password or covered by a CORS rule.  The plan itself is made from the
*decoded, normalised* path (`/a/./b`, `/a//b`, `%61` all name `/a/b`, as the static
site resolves them), so no spelling of a URL slips past an auth rule.  Rules are
matched without regular expressions: exact paths in a dict, prefixes (`/docs/*`) by
walking the path's segments from the longest up, each step a dict lookup.

Order, as a request meets them: a redirect answers at once (3xx, Location with
`$uri`, `$rest`, `$query` substituted; the query is kept unless the target names
it); a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
before auth, since browsers send no credentials with it; basic auth (401 with
`WWW-Authenticate`, else on); a rewrite serves another path of the same root
internally (auth is checked for both the asked and the rewritten path); a missing
path without an extension gets the SPA fallback file (200); actual CORS requests get
`Access-Control-Allow-Origin` and `Vary: Origin` pushed on whatever answer results.

A miss is the site's to answer only when nothing comes after it (`site.last_resort`,
set by the Application).  In front of an ASGI app (`--asgi` with a ROOT) a path the
root lacks falls through to the app: no 404 of ours, no OPTIONS answer for it, and
the SPA fallback only for browser navigations (requests that accept `text/html`), so
the app's `/api/...` stays the app's.

Basic auth.  Users come from an htpasswd-style file (`user:hash` per line) with
bcrypt (`$2y$`/`$2b$`/`$2a$`, `htpasswd -B`), argon2 (`$argon2id$`...) or scrypt
(`scrypt$N$r$p$salt$hash`, as `pageloan hash-password` prints) hashes; weaker
formats (`$apr1$`, `{SHA}`, crypt, plain text) are refused at start-up with the line
number.  A hash costs tens of milliseconds, so it never runs on the event loop: the
answer waits on a small thread pool.  A verified `Authorization` value is
remembered as an HMAC (a per-process random key) of the header, so a valid login is
one HMAC and one dict lookup per request, not a rehash, and the plaintext is never
kept; a refused value is remembered the same way, so replaying it costs no hash
either.  Unknown users are checked against a dummy hash, so timing does not say
which names exist.  The file is re-read when it changes (checked at most once a
second), and the remembered verdicts are forgotten with it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.message import Message
from ..core.passwords import verify_password
from ..core.safepath import UnsafePath, virtual_parts
from ..http.request import BadRequest, Request
from ..http.responses import empty_response, redirect_response
from ..http.wire import header_block
from .error_pages import default_error_page

__all__ = ["AuthRule", "CorsRule", "Redirect", "RuleError", "RuleSpec", "SiteRules", "load_htpasswd",
           "options_answer", "parse_auth", "parse_cors", "parse_redirect"]

log = logging.getLogger("pageloan.rules")

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
PLAN_CACHE_MAX = 4096
VERDICT_CACHE_MAX = 4096
MAX_PENDING_CHECKS = 64          # password checks queued at once; beyond, 503
RELOAD_CHECK_SECONDS = 1.0
ALLOW = "GET, HEAD, OPTIONS"

_SAFE_IN_PATH = "/!$&'()*+,;=:@~-._"


class RuleError(ValueError):
    """A rule that cannot be used, with the reason (the caller adds where it came from)."""


# -- the configuration: plain data ------------------------------------------------------------
@dataclass(frozen=True)
class Redirect:
    """`source` (exact, or a prefix ending in `/*`) → `target`; status 0 is an internal rewrite."""

    source: str
    target: str
    status: int = 301

    @property
    def is_rewrite(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class AuthRule:
    path: str                 # exact, or a prefix ending in `/*`
    htpasswd: Path
    realm: str = "Restricted"


@dataclass(frozen=True)
class CorsRule:
    path: str
    origins: tuple[str, ...] = ("*",)
    methods: tuple[str, ...] = ("GET", "HEAD")
    headers: tuple[str, ...] = ("Accept", "Accept-Language", "Content-Language", "Content-Type",
                                "Range", "If-None-Match", "If-Modified-Since", "Authorization")
    expose: tuple[str, ...] = ("Content-Length", "Content-Range", "Content-Encoding", "ETag")
    max_age: int = 600
    credentials: bool = False


@dataclass(frozen=True)
class RuleSpec:
    """Everything a root's rules say; empty means none (and zero cost)."""

    redirects: tuple[Redirect, ...] = ()
    auth: tuple[AuthRule, ...] = ()
    cors: tuple[CorsRule, ...] = ()
    spa_fallback: str | None = None

    def __bool__(self) -> bool:
        return bool(self.redirects or self.auth or self.cors or self.spa_fallback)


def _check_pattern(path: str) -> str:
    if not path.startswith("/"):
        raise RuleError(f"path {path!r} must start with '/'")
    if "*" in path and not (path == "/*" or path.endswith("/*")) or path.count("*") > 1:
        raise RuleError(f"path {path!r}: '*' is only allowed as a final '/*' (a prefix)")
    try:
        virtual_parts(path[:-1] if path.endswith("*") else path)
    except UnsafePath as exc:
        raise RuleError(f"path {path!r}: {exc}") from None
    return path


def make_redirect(source: str, target: str, status: int) -> Redirect:
    _check_pattern(source)
    if status != 0 and status not in REDIRECT_STATUSES:
        raise RuleError(f"redirect status {status} is not one of {', '.join(map(str, REDIRECT_STATUSES))}")
    if not target:
        raise RuleError("empty target")
    if status == 0 and not target.startswith("/"):
        raise RuleError(f"rewrite target {target!r} must be a path in the same root (start with '/')")
    if status and not (target.startswith("/") or "://" in target):
        raise RuleError(f"redirect target {target!r} must be a path or an absolute URL")
    for word in _variables_in(target):
        if word not in ("uri", "rest", "query", "args"):
            raise RuleError(f"unknown variable ${word} in {target!r} (use $uri, $rest, $query)")
    if "$rest" in target and not source.endswith("*"):
        raise RuleError(f"$rest needs a prefix source ending in '/*', not {source!r}")
    if any(ord(c) < 33 or ord(c) == 127 for c in target):
        raise RuleError(f"target {target!r} may not contain spaces or control characters (percent-encode them)")
    if not target.isascii():
        # A Location header is ASCII: percent-encode what the operator wrote as text.
        target = quote(target, safe=":/?#[]@!$&'()*+,;=%~")
    return Redirect(source, target, status)


def _variables_in(text: str) -> list[str]:
    words = []
    for piece in text.split("$")[1:]:
        name = ""
        for ch in piece:
            if not (ch.isalnum() or ch == "_"):
                break
            name += ch
        words.append(name)
    return words


def parse_redirect(text: str, *, rewrite: bool = False) -> Redirect:
    """`FROM TO [STATUS]` (a redirect, default 301) or `FROM TO` (a rewrite)."""
    fields = text.split()
    if rewrite:
        if len(fields) != 2:
            raise RuleError(f"expected 'FROM TO', got {text!r}")
        return make_redirect(fields[0], fields[1], 0)
    if len(fields) not in (2, 3):
        raise RuleError(f"expected 'FROM TO [STATUS]', got {text!r}")
    try:
        status = int(fields[2]) if len(fields) == 3 else 301
    except ValueError:
        raise RuleError(f"status {fields[2]!r} is not a number") from None
    return make_redirect(fields[0], fields[1], status)


def parse_auth(text: str, base: Path | None = None) -> AuthRule:
    """`PATH HTPASSWD [REALM...]`; the file is read (and checked) now."""
    fields = text.split(None, 2)
    if len(fields) < 2:
        raise RuleError(f"expected 'PATH HTPASSWD [REALM]', got {text!r}")
    return make_auth(fields[0], fields[1], fields[2] if len(fields) == 3 else "Restricted", base)


def make_auth(path: str, htpasswd: str | Path, realm: str = "Restricted", base: Path | None = None) -> AuthRule:
    _check_pattern(path)
    file = Path(htpasswd)
    if base is not None and not file.is_absolute():
        file = base / file
    if '"' in realm or "\\" in realm or any(ord(c) < 32 for c in realm):
        raise RuleError(f"realm {realm!r} may not contain quotes, backslashes or control characters")
    load_htpasswd(file)              # fails now, naming the file and line, not at the first request
    return AuthRule(path, file, realm)


def parse_cors(text: str) -> CorsRule:
    """`PATH ORIGIN[,ORIGIN...]` (`*` for any origin)."""
    fields = text.split()
    if len(fields) != 2:
        raise RuleError(f"expected 'PATH ORIGIN[,ORIGIN...]', got {text!r}")
    return make_cors(fields[0], tuple(o for o in fields[1].split(",") if o))


def make_cors(path: str, origins: Iterable[str], **options: Any) -> CorsRule:
    _check_pattern(path)
    origins = tuple(origins)
    if not origins:
        raise RuleError("no origins")
    for origin in origins:
        if origin != "*" and ("://" not in origin or origin.endswith("/") or origin.count("/") != 2):
            raise RuleError(f"origin {origin!r} must be '*' or scheme://host[:port], no path")
    if options.get("credentials") and "*" in origins:
        raise RuleError("credentials cannot be allowed for every origin ('*'): name the origins")
    methods = tuple(m.upper() for m in options.pop("methods", CorsRule.methods))
    return CorsRule(path, origins, methods, **options)


# -- htpasswd -------------------------------------------------------------------------------------
def _scheme_of(hashed: str) -> str | None:
    if hashed.startswith(("$2y$", "$2b$", "$2a$")):
        return "bcrypt"
    if hashed.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return "argon2"
    if hashed.startswith("scrypt$"):
        return "scrypt"
    return None


def load_htpasswd(path: Path) -> dict[str, str]:
    """user → hash from an htpasswd-style file; RuleError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read: {exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user or not hashed:
            raise RuleError(f"{path}:{number}: expected 'user:hash'")
        if _scheme_of(hashed) is None:
            raise RuleError(f"{path}:{number}: unsupported hash for {user!r} (use bcrypt: htpasswd -B, "
                            "argon2, or scrypt from 'pageloan hash-password'; $apr1$/{{SHA}}/crypt are too weak)")
        users[user] = hashed
    return users


def _verify(password: str, hashed: str) -> bool:
    """Constant-time check of `password` against one stored hash (runs on a pool thread)."""
    scheme = _scheme_of(hashed)
    try:
        if scheme == "bcrypt":
            import bcrypt
            return bcrypt.checkpw(password.encode("utf-8"), hashed.encode("ascii"))
        if scheme == "argon2":
            from argon2 import PasswordHasher
            from argon2.exceptions import Argon2Error, InvalidHashError
            try:
                return PasswordHasher().verify(hashed, password)
            except (Argon2Error, InvalidHashError):
                return False
        if scheme == "scrypt":
            return verify_password(password, hashed)
    except (ValueError, TypeError):
        return False
    return False


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    # Unknown users are checked against this, at a typical cost, so that the time a
    # refusal takes does not tell which user names exist.
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        import bcrypt
        _DUMMY_HASH = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=10)).decode("ascii")
    return _DUMMY_HASH


_CHECK_POOL: ThreadPoolExecutor | None = None


def _check_pool() -> ThreadPoolExecutor:
    global _CHECK_POOL
    if _CHECK_POOL is None:
        _CHECK_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pageloan-auth")
    return _CHECK_POOL


class _Guard:
    """One auth rule at run time: its users, and the verdicts remembered as HMACs."""

    def __init__(self, rule: AuthRule) -> None:
        self.rule = rule
        self.challenge = header_block([("WWW-Authenticate", f'Basic realm="{rule.realm}", charset="UTF-8"')],
                                      end=False)
        self._key = os.urandom(32)
        self._users: dict[str, str] = {}
        self._identity: tuple | None = None
        self._checked_at = 0.0
        self._good: dict[bytes, str] = {}
        self._bad: set[bytes] = set()
        self.pending = 0
        self._load()

    def _load(self) -> None:
        st = os.stat(self.rule.htpasswd)
        self._users = load_htpasswd(self.rule.htpasswd)
        self._identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._good = {}
        self._bad = set()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RELOAD_CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            st = os.stat(self.rule.htpasswd)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != self._identity:
                self._load()
                log.info("reloaded %s (%d users)", self.rule.htpasswd, len(self._users))
        except (OSError, RuleError) as exc:
            # Keep serving with the users we had rather than lock everybody out.
            log.error("cannot reload %s: %s", self.rule.htpasswd, exc)

    def check(self, request: Request) -> bool | Any:
        """True (let in), False (401), or an awaitable of either (a hash to compute)."""
        header = request.header(b"authorization")
        if header is None:
            return False
        self._maybe_reload()
        mac = hmac.new(self._key, header, hashlib.sha256).digest()
        if mac in self._good:
            return True
        if mac in self._bad:
            return False
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        if self.pending >= MAX_PENDING_CHECKS:
            return None                  # too many checks queued: 503, try again
        return self._verify_later(mac, user, password, hashed)

    async def _verify_later(self, mac: bytes, user: str, password: str, hashed: str | None) -> bool:
        self.pending += 1
        users = self._users
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(_check_pool(), _verify, password,
                                            hashed if hashed is not None else _dummy_hash())
        finally:
            self.pending -= 1
        ok = ok and hashed is not None
        if users is self._users:        # not reloaded meanwhile: the verdict still stands
            if ok:
                if len(self._good) >= VERDICT_CACHE_MAX:
                    self._good.clear()
                self._good[mac] = user
            else:
                if len(self._bad) >= VERDICT_CACHE_MAX:
                    self._bad.clear()
                self._bad.add(mac)
        return ok


def _basic_credentials(header: bytes) -> tuple[str, str] | None:
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


# -- CORS -------------------------------------------------------------------------------------------
class _Cors:
    def __init__(self, rule: CorsRule) -> None:
        self.rule = rule
        self.any_origin = "*" in rule.origins
        self.origins = frozenset(o.encode("latin-1") for o in rule.origins if o != "*")
        # With `*` and no credentials the answer does not depend on Origin: no Vary.
        self.varies = not (self.any_origin and not rule.credentials)
        self.methods = frozenset(rule.methods) | {"OPTIONS"}
        extra = []
        if rule.credentials:
            extra.append(("Access-Control-Allow-Credentials", "true"))
        self._actual_extra = extra + ([("Access-Control-Expose-Headers", ", ".join(rule.expose))]
                                      if rule.expose else [])
        self._preflight_extra = extra + [
            ("Access-Control-Allow-Methods", ", ".join(rule.methods)),
            ("Access-Control-Allow-Headers", ", ".join(rule.headers)),
            ("Access-Control-Max-Age", str(rule.max_age)),
        ]
        self.vary_only = header_block([("Vary", "Origin")], end=False)
        self._blocks: dict[bytes, bytes] = {}

    def allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    def _allow_origin(self, origin: bytes) -> str:
        return "*" if self.any_origin and not self.rule.credentials else origin.decode("latin-1")

    def actual_block(self, origin: bytes | None) -> bytes | None:
        """The header lines to push on an answer to a request with this Origin."""
        if origin is None or not self.allowed(origin):
            return self.vary_only if self.varies else None
        block = self._blocks.get(origin)
        if block is None:
            fields = [("Access-Control-Allow-Origin", self._allow_origin(origin)), *self._actual_extra]
            if self.varies:
                fields.append(("Vary", "Origin"))
            block = header_block(fields, end=False)
            if len(self._blocks) < 256:
                self._blocks[origin] = block
        return block

    def preflight(self, origin: bytes, method: bytes) -> Message:
        fields: list[tuple[str, str]] = [("Allow", ALLOW)]
        if self.allowed(origin) and method.decode("latin-1").upper() in self.methods:
            fields += [("Access-Control-Allow-Origin", self._allow_origin(origin)), *self._preflight_extra]
        fields.append(("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"))
        return empty_response(204, fields, length=False)


# -- matching -----------------------------------------------------------------------------------
class _Table:
    """Exact paths and `/prefix/*` patterns → a value, matched with dict lookups only."""

    def __init__(self) -> None:
        self.exact: dict[str, Any] = {}
        self.prefix: dict[str, Any] = {}

    def add(self, pattern: str, value: Any) -> None:
        if pattern.endswith("*"):
            self.prefix.setdefault(pattern[:-1], value)     # first rule for a pattern wins
        else:
            self.exact.setdefault(pattern, value)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefix)

    def match(self, path: str) -> tuple[Any, str] | None:
        """(value, rest after the prefix) for the exact or longest prefix rule, or None."""
        hit = self.exact.get(path)
        if hit is not None:
            return hit, ""
        if not self.prefix:
            return None
        # "/a/b/c" tries "/a/b/c/" (the directory itself), "/a/b/", "/a/", "/".
        probe = path if path.endswith("/") else path + "/"
        while True:
            hit = self.prefix.get(probe)
            if hit is not None:
                return hit, path[len(probe):]
            if probe == "/":
                return None
            probe = probe[:probe.rstrip("/").rfind("/") + 1]


class _Plan:
    """What the rules say about one raw path (everything but the query and headers)."""

    __slots__ = ("redirect", "location", "rewrite", "guard", "cors", "spa")

    def __init__(self) -> None:
        self.redirect: Redirect | None = None
        self.location = ""
        self.rewrite: bytes | None = None
        self.guard: _Guard | None = None
        self.cors: _Cors | None = None
        self.spa = False


_NOTHING = _Plan()


def _substitute(target: str, path: str, rest: str) -> str:
    if "$" not in target:
        return target
    return (target.replace("$uri", quote(path, safe=_SAFE_IN_PATH))
            .replace("$rest", quote(rest, safe=_SAFE_IN_PATH)))


def _with_query(location: str, query: str) -> str:
    if "$query" in location or "$args" in location:
        return location.replace("$query", query).replace("$args", query)
    if query:
        return location + ("&" if "?" in location else "?") + query
    return location


class SiteRules:
    """A RuleSpec compiled for one StaticSite; `install(site)` puts it in front."""

    def __init__(self, spec: RuleSpec, root: Path) -> None:
        self.spec = spec
        self.redirects = _Table()
        for rule in spec.redirects:
            self.redirects.add(rule.source, rule)
        self.guards = _Table()
        for auth in spec.auth:
            self.guards.add(auth.path, _Guard(auth))
        self.cors = _Table()
        for cors in spec.cors:
            self.cors.add(cors.path, _Cors(cors))
        self.spa_path: str | None = None
        self.spa_url: str | None = None
        if spec.spa_fallback:
            name = spec.spa_fallback.lstrip("/")
            target = (root / name).resolve()
            if not target.is_file() or not str(target).startswith(str(root.resolve()) + os.sep):
                raise RuleError(f"SPA fallback {spec.spa_fallback!r} is not a file inside {root}")
            self.spa_path = str(target)
            self.spa_url = "/" + name
        self._plans: dict[bytes, _Plan] = {}
        self._site: Any = None
        self._respond: Callable[..., Any] = _not_installed

    def install(self, site: Any) -> None:
        """Answer through these rules from now on: `site.respond` becomes ours."""
        self._site = site
        self._respond = site.respond                 # the site's own lookup
        site.rules = self
        site.respond = self.respond

    # -- per request ---------------------------------------------------------------------------
    def plan(self, request: Request) -> _Plan:
        raw = request.raw_path
        plan = self._plans.get(raw)
        if plan is None:
            plan = self._make_plan(request)
            if len(self._plans) >= PLAN_CACHE_MAX:
                self._plans.clear()
            self._plans[raw] = plan
        return plan

    def _make_plan(self, request: Request) -> _Plan:
        try:
            text = request.path
            parts = virtual_parts(text)
        except (UnsafePath, BadRequest):
            return _NOTHING                  # the site refuses it (400) before any rule matters
        path = "/" + "/".join(parts)
        if parts and (text.endswith("/") or text.endswith("/.")):
            path += "/"
        plan = _Plan()
        found = self.redirects.match(path) if self.redirects else None
        if found is not None:
            rule, rest = found
            location = _substitute(rule.target, path, rest)
            if rule.is_rewrite:
                plan.rewrite = location.encode("utf-8") if location.isascii() \
                    else quote(location, safe=_SAFE_IN_PATH).encode("ascii")
            else:
                plan.redirect, plan.location = rule, location
        if self.guards:
            hit = self.guards.match(path)
            if hit is None and plan.rewrite is not None:
                hit = self.guards.match(_decoded(plan.rewrite))
            plan.guard = hit[0] if hit is not None else None
        if self.cors:
            hit = self.cors.match(path)
            plan.cors = hit[0] if hit is not None else None
        if self.spa_path is not None:
            last = parts[-1] if parts else ""
            plan.spa = "." not in last
        if (plan.redirect is None and plan.rewrite is None and plan.guard is None and plan.cors is None
                and not plan.spa):
            return _NOTHING               # no rule concerns this path: the site's own lookup
        return plan

    def respond(self, request: Request, *, keep: bool = False) -> Any:
        plan = self.plan(request)
        if plan is _NOTHING:
            # No rule concerns this path, now or later: the site may keep its answer
            # in the lane.  A path any rule touches is never kept (auth, CORS, ...).
            return self._respond(request, keep=keep)
        if plan.redirect is not None:
            return redirect_response(_with_query(plan.location, request.query_string), plan.redirect.status)
        cors = plan.cors
        if cors is not None and request.method == "OPTIONS":
            origin = request.header(b"origin")
            method = request.header(b"access-control-request-method")
            if origin is not None and method is not None:
                return cors.preflight(origin, method)
        guard = plan.guard
        if guard is not None:
            verdict = guard.check(request)
            if verdict is not True:
                if verdict is False:
                    return self._unauthorized(guard, cors, request)
                if verdict is None:
                    return _error(self._site, 503, [("Retry-After", "1")])
                return self._after_check(verdict, guard, plan, request)
        return self._serve(plan, request)

    async def _after_check(self, pending: Any, guard: _Guard, plan: _Plan, request: Request) -> Any:
        if not await pending:
            return self._unauthorized(guard, plan.cors, request)
        answer = self._serve(plan, request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer

    def _serve(self, plan: _Plan, request: Request) -> Any:
        asked = request
        if plan.rewrite is not None:
            query = request.query_string
            target = plan.rewrite + (b"?" + query.encode("latin-1") if query else b"")
            asked = Request(request.method, target, request.version, request.raw_headers,
                            request.keep_alive, request.client, request.body_stream)
            asked.app = request.app
        answer = self._respond(asked)
        last_resort = self._site.last_resort
        if answer is None and plan.spa and request.method in ("GET", "HEAD") \
                and (last_resort or _navigation(request)):
            try:
                answer = self._site.serve_file(asked, self.spa_path, self.spa_url)
            except OSError:
                answer = None
        if answer is None and plan.cors is not None and last_resort:
            # Answer the error here, so that it carries the CORS headers too: a page on
            # another origin then sees the 404 or 405, not an opaque network error.
            answer = self._site.not_found(request) if request.method in ("GET", "HEAD") \
                else _error(self._site, 405, [("Allow", ALLOW)])
        if plan.cors is not None and answer is not None and isinstance(answer, Message):
            block = plan.cors.actual_block(request.header(b"origin"))
            if block is not None:
                answer.push(block)
        return answer

    def _unauthorized(self, guard: _Guard, cors: _Cors | None, request: Request) -> Message:
        answer = _error(self._site, 401)
        answer.push(guard.challenge)
        if cors is not None:
            block = cors.actual_block(request.header(b"origin"))
            if block is not None:
                answer.push(block)
        return answer


def _error(site: Any, status: int, headers: list[tuple[str, str]] | None = None) -> Message:
    """The root's own page for `status` (401.html...), else the built-in one."""
    page = site.error_page(status) or default_error_page(status)
    if headers:
        page.push(header_block(headers, end=False))
    return page


def _navigation(request: Request) -> bool:
    """A browser loading a page (it accepts HTML), not a script's fetch of an API."""
    accept = request.header(b"accept")
    return accept is not None and b"text/html" in accept


def _not_installed(request: Request) -> Any:
    raise RuntimeError("SiteRules.install(site) was not called")


def _decoded(raw: bytes) -> str:
    from urllib.parse import unquote
    try:
        parts = virtual_parts(unquote(raw.decode("ascii"), errors="strict"))
    except (UnsafePath, UnicodeDecodeError):
        return "/"
    return "/" + "/".join(parts)


# -- OPTIONS without rules ------------------------------------------------------------------------
def options_answer(site: Any, request: Request) -> Message | None:
    """`OPTIONS *` and `OPTIONS /path` for a static site: 204 with `Allow`, or 404."""
    if request.raw_path == b"*":
        if not site.last_resort:
            return None                              # an ASGI app behind us answers it
        return empty_response(204, [("Allow", ALLOW)], length=False)
    probe = Request("HEAD", request.target, request.version, request.raw_headers, request.keep_alive,
                    request.client, None)
    found: Message | None = type(site).respond(site, probe)     # the site's own lookup, rules aside
    if found is not None and found.status == 400:
        return found                                 # a path no file can have
    if found is None or found.status >= 400 and found.status not in (401, 403):
        if not site.last_resort:
            return None                          # something after the site may answer it
        page: Message = site.not_found(request)
        return page
    return empty_response(204, [("Allow", ALLOW)], length=False)
