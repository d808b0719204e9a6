"""Routing: URL pattern → handler, by a segment trie whose cost does not grow with routes.

Theory of operation.  A pattern such as `/users/{id:int}/files/{rest:path}` is split on
"/" into segments; each segment is a literal, a parameter with a converter (`str` —
the default, one non-empty segment —, `int`, `float`, `uuid`, or one added with
`add_converter`), or, last only, a `path` catch-all that takes the rest of the URL.
Routes are stored in a trie with one node per segment:

    node.literal   dict: segment text → child        (one dict lookup)
    node.params    [(converter, child)], at most one child per converter kind
    node.rest      the child reached by a `path` catch-all, if any
    node.methods   dict: method → Route, at nodes where a pattern ends

A lookup walks the request's segments, trying at each node the literal child first,
then the parameter children in converter priority (int, float, uuid before str), then
the catch-all, backing up if a branch dead-ends.  Until the first node that offers
such a choice the walk is a plain loop (most paths never meet one).  The work per
request depends on the depth of the path and on the handful of converter kinds,
never on how many routes exist: a thousand routes under `/api/` cost the same dict
lookup as ten.
Parameter *names* live on the Route, not in the trie, so `/a/{x}` and `/a/{y}/b`
share a node.  Routes without parameters are also kept in an exact dict keyed by the
raw path bytes, so the commonest case costs one lookup and no decoding at all.

Precedence, therefore: a literal segment beats a parameter at the same position; a
more specific converter beats `str`; a parameter beats a catch-all.  A lookup returns
a `RouteMatch`: the route and its parameters; or, for a path that matches some route
but not for the request's method, no route and the methods that would have matched
(→ 405 with `Allow`); or `NO_ROUTE`.  A hit on a route without parameters returns a
RouteMatch built when the route was added: the common case allocates nothing.
GET routes answer HEAD too.

Segments are matched percent-decoded, each on its own, so `%2F` inside a segment is
data, not a separator, and a literal `/caf%C3%A9` matches the pattern `/café`.

`route(...)` is the decorator handler modules use; it collects into the current
registry (registry.py).  `mount(prefix, directory)` serves a static directory under a
prefix, beside the handlers.
"""

from __future__ import annotations

import dis
import inspect
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_to_bytes

from ..http.errors import HTTPError
from ..http.request import Request
from ..http.responses import redirect_response
from ..static.site import StaticSite
from .registry import current_registry

__all__ = ["route", "mount", "Route", "Mount", "Router", "RouteMatch", "NO_ROUTE", "RouteConflict",
           "add_converter", "CONVERTERS"]


class RouteConflict(ValueError):
    """Two routes claim the same pattern and method."""


# -- converters ------------------------------------------------------------------------

class Converter:
    """Turns one path segment into a value, or raises ValueError if it does not fit."""

    __slots__ = ("name", "parse", "priority")

    def __init__(self, name: str, parse: Callable[[str], Any], priority: int) -> None:
        self.name = name
        self.parse = parse
        self.priority = priority   # lower is tried first


def _parse_int(segment: str) -> int:
    # Strict: int() would also take " 7", "+7", "7_000" and non-ASCII digits.
    if segment.isascii() and segment.isdigit():
        return int(segment)
    raise ValueError(segment)


_FLOAT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def _parse_float(segment: str) -> float:
    if _FLOAT.match(segment):
        return float(segment)
    raise ValueError(segment)


def _parse_uuid(segment: str) -> uuid.UUID:
    # Only the canonical 8-4-4-4-12 form: uuid.UUID() also takes braces and "urn:".
    if _UUID.match(segment):
        return uuid.UUID(segment)
    raise ValueError(segment)


CONVERTERS: dict[str, Converter] = {
    "int": Converter("int", _parse_int, 10),
    "float": Converter("float", _parse_float, 20),
    "uuid": Converter("uuid", _parse_uuid, 30),
    "str": Converter("str", str, 100),
}
PATH = "path"   # the catch-all: not a per-segment converter


def add_converter(name: str, parse: Callable[[str], Any], priority: int = 50) -> None:
    """Make `{name:NAME}` available: `parse(segment)` returns a value or raises ValueError."""
    if name == PATH or not name.isidentifier():
        raise ValueError(f"bad converter name {name!r}")
    CONVERTERS[name] = Converter(name, parse, priority)


# -- routes ----------------------------------------------------------------------------

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z_0-9]*)(?::([A-Za-z_][A-Za-z_0-9]*))?\}\Z")


def _parse_pattern(pattern: str) -> list[tuple[str, str]]:
    """`/a/{id:int}` → [("literal", "a"), ("int", "id")]; `path` only last."""
    if not pattern.startswith("/"):
        raise ValueError(f"route pattern {pattern!r} must start with '/'")
    parts: list[tuple[str, str]] = []
    names: set[str] = set()
    segments = pattern.split("/")[1:]
    for i, segment in enumerate(segments):
        if "{" not in segment and "}" not in segment:
            parts.append(("literal", segment))
            continue
        m = _PARAM.match(segment)
        if m is None:
            raise ValueError(f"route pattern {pattern!r}: a parameter must be a whole segment "
                             f"like {{name}} or {{name:int}}, not {segment!r}")
        name, kind = m.group(1), m.group(2) or "str"
        if kind != PATH and kind not in CONVERTERS:
            raise ValueError(f"route pattern {pattern!r}: unknown converter {kind!r} "
                             f"(known: {', '.join(sorted([*CONVERTERS, PATH]))})")
        if kind == PATH and i != len(segments) - 1:
            raise ValueError(f"route pattern {pattern!r}: {{{name}:path}} must be the last segment")
        if name in names or name == "request":
            raise ValueError(f"route pattern {pattern!r}: parameter name {name!r} used twice or reserved")
        names.add(name)
        parts.append((kind, name))
    return parts


_SUSPENDING_OPS = frozenset({"YIELD_VALUE", "SEND", "GET_AWAITABLE", "BEFORE_ASYNC_WITH",
                             "GET_AITER", "GET_ANEXT", "ASYNC_GEN_WRAP"})


def _can_suspend(function: Callable[..., Any]) -> bool:
    """Whether a coroutine function's own body has any point where it could suspend."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None:
        return True
    return any(op.opname in _SUSPENDING_OPS for op in dis.get_instructions(code))


class Route:
    """A pattern, the methods it answers, and the handler: `handler(request, **params)`."""

    __slots__ = ("pattern", "handler", "methods", "name", "parts", "param_names",
                 "is_async", "never_suspends", "origin", "implied_head")

    def __init__(self, pattern: str, handler: Callable[..., Any],
                 methods: Iterable[str] | str | None = None, *, name: str | None = None) -> None:
        if isinstance(methods, str):
            methods = [methods]
        wanted = {m.upper() for m in (methods or ("GET",))}
        # A GET route answers HEAD too (the session sends the head without the body),
        # unless another route claims HEAD for this pattern explicitly.
        self.implied_head = "GET" in wanted and "HEAD" not in wanted
        if "GET" in wanted:
            wanted.add("HEAD")
        self.pattern = pattern
        self.handler = handler
        self.methods = frozenset(wanted)
        self.name = name or getattr(handler, "__name__", None) or pattern
        self.parts = _parse_pattern(pattern)
        self.param_names = tuple(name for kind, name in self.parts if kind != "literal")
        # An `async def` handler returns a coroutine the session awaits in a task; a
        # plain `def` is answered inline, without creating a task.
        self.is_async = inspect.iscoroutinefunction(handler) or (
            callable(handler) and inspect.iscoroutinefunction(type(handler).__call__))
        # An `async def` with no suspension point in its body (no await, async for or
        # async with) finishes in one step: it is run to completion inline, like a
        # `def`, instead of paying for a task.
        self.never_suspends = self.is_async and inspect.iscoroutinefunction(handler) \
            and not _can_suspend(handler)
        self.origin = "<unknown>"   # the handler module that declared it (set by the loader)

    @property
    def is_exact(self) -> bool:
        return not self.param_names

    def __repr__(self) -> str:
        return f"<Route {'|'.join(sorted(self.methods))} {self.pattern} → {self.name}>"


def route(pattern: str, methods: Iterable[str] | str | None = None, *,
          name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: serve `pattern` (for `methods`, default GET+HEAD) with the function."""
    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        current_registry().routes.append(Route(pattern, handler, methods, name=name))
        return handler
    return register


# -- mounts: a static directory under a prefix --------------------------------------------

class Mount:
    """Serve a StaticSite (or a directory) under `prefix`, e.g. `mount("/assets", dir)`."""

    def __init__(self, prefix: str, site: Any) -> None:
        prefix = "/" + prefix.strip("/")
        if prefix == "/":
            raise ValueError("mount a directory under a prefix; the root belongs to the static site")
        self.prefix = prefix
        self.site = site

    def routes(self) -> list[Route]:
        serve = _MountedSite(self.prefix, self.site)
        redirect = _redirect_to_slash(self.prefix + "/")
        return [Route(self.prefix + "/{path:path}", serve, ("GET",), name=f"mount {self.prefix}"),
                Route(self.prefix, redirect, ("GET",), name=f"mount {self.prefix}")]

    def __repr__(self) -> str:
        return f"<Mount {self.prefix} → {self.site!r}>"


def mount(prefix: str, directory: os.PathLike | str | Any) -> Mount:
    """Serve the files of `directory` (or a StaticSite) under `prefix`, beside the handlers."""
    site = directory
    if isinstance(directory, (str, os.PathLike)):
        site = StaticSite(Path(directory))
    m = Mount(prefix, site)
    current_registry().mounts.append(m)
    return m


def _redirect_to_slash(location: str) -> Callable[[Request], Any]:
    def redirect(request: Request) -> Any:
        target = location + ("?" + request.query_string if request.query_string else "")
        return redirect_response(quote(target, safe="/?=&%"), 301)
    return redirect


class _MountedSite:
    """The handler of a mount: re-aims the request at the site with the prefix removed."""

    __slots__ = ("prefix", "site")

    def __init__(self, prefix: str, site: Any) -> None:
        self.prefix = prefix
        self.site = site

    def __call__(self, request: Request, path: str) -> Any:
        target = quote("/" + path).encode("ascii")
        if request.query_string:
            target += b"?" + request.query_string.encode("latin-1")
        inner = Request(request.method, target, request.version, request.raw_headers,
                        request.keep_alive, request.client, None)
        inner.app = request.app
        answer = self.site.respond(inner)
        if answer is None:
            raise HTTPError(404)
        if getattr(answer, "status", None) == 301:
            # The site redirects a directory to its slash-terminated URL, spelled
            # without our prefix; the right Location is the outer URL plus "/".
            return _redirect_to_slash(request.path + "/")(request)
        return answer


# -- the trie --------------------------------------------------------------------------

class _Node:
    __slots__ = ("literal", "params", "rest", "methods", "forks")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.params: list[tuple[Converter, _Node]] = []
        self.rest: _Node | None = None
        self.methods: dict[str, Route] = {}
        self.forks = False    # more than one kind of child: a lookup may have to back up

    def update_forks(self) -> None:
        kinds = bool(self.literal) + len(self.params) + (self.rest is not None)
        self.forks = kinds > 1


_NO_PARAMS: dict[str, Any] = {}   # shared by every match without parameters: never mutate
_NO_METHODS: frozenset[str] = frozenset()
_MISS_MEMO_LIMIT = 4096


class RouteMatch(NamedTuple):
    """The answer of `Router.match`.

    `route` set: call `route.handler(request, **params)`.  `route` None and `allowed`
    non-empty: the path exists for other methods (405, `Allow: allowed`).  Both empty:
    no route has this path (`NO_ROUTE`).
    """

    route: Route | None
    params: dict[str, Any] = _NO_PARAMS
    allowed: frozenset[str] = _NO_METHODS


NO_ROUTE = RouteMatch(None)


def _segments_of(raw_path: bytes) -> list[str] | None:
    """The decoded segments of a raw path, or None if it is not a decodable path."""
    if not raw_path.startswith(b"/"):
        return None
    try:
        if b"%" not in raw_path:
            return raw_path.decode("utf-8").split("/")[1:]
        return [unquote_to_bytes(s).decode("utf-8") for s in raw_path.split(b"/")[1:]]
    except UnicodeDecodeError:
        return None


class Router:
    """Routes in a segment trie; `match(method, raw_path)` finds the handler."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._root = _Node()
        # Raw path of a parameterless pattern → method → its prebuilt RouteMatch.
        self._exact: dict[bytes, dict[str, RouteMatch]] = {}
        # Raw paths no route can match (most of a static site): one set lookup next time.
        self._misses: set[bytes] = set()
        self.routes: list[Route] = []
        self.visits = 0   # trie nodes entered by lookups: work done, for tests and tuning
        for r in routes:
            self.add(r)

    def add(self, new: Route) -> Route:
        self._misses.clear()
        node = self._root
        path = [node]
        for kind, value in new.parts:
            if kind == "literal":
                node = node.literal.setdefault(value, _Node())
            elif kind == PATH:
                if node.rest is None:
                    node.rest = _Node()
                node = node.rest
            else:
                converter = CONVERTERS[kind]
                for have, child in node.params:
                    if have is converter:
                        node = child
                        break
                else:
                    child = _Node()
                    node.params.append((converter, child))
                    node.params.sort(key=lambda pair: pair[0].priority)
                    node = child
            path.append(node)
        claimed: list[str] = []
        for method in new.methods:
            old = node.methods.get(method)
            if old is None:
                claimed.append(method)
            elif method == "HEAD" and old.implied_head != new.implied_head:
                # An explicit HEAD route beats the HEAD a GET route implies, in any order.
                if old.implied_head:
                    claimed.append(method)
            else:
                raise RouteConflict(f"{method} {new.pattern} ({new.name}, from {new.origin}) "
                                    f"is already routed to {old.name} (from {old.origin})")
        for method in claimed:
            node.methods[method] = new
        for visited in path:
            visited.update_forks()
        if new.is_exact:
            self._exact[quote(new.pattern).encode("ascii")] = {
                method: RouteMatch(r) for method, r in node.methods.items()}
        self.routes.append(new)
        return new

    def add_mount(self, m: Mount) -> None:
        for r in m.routes():
            r.origin = getattr(m, "origin", r.origin)
            self.add(r)

    def route(self, pattern: str, methods: Iterable[str] | str | None = None, *,
              name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form for a router built by hand."""
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.add(Route(pattern, handler, methods, name=name))
            return handler
        return register

    def exact_routes(self, method: str) -> dict[bytes, Route]:
        """Raw path → the parameterless route answering `method` there."""
        found: dict[bytes, Route] = {}
        for path, matches in self._exact.items():
            hit = matches.get(method)
            if hit is not None and hit.route is not None:
                found[path] = hit.route
        return found

    # -- lookup --------------------------------------------------------------------------
    def match(self, method: str, raw_path: bytes) -> RouteMatch:
        """The route for `method` and `raw_path` with its parameters; else the methods
        this path answers (405); else `NO_ROUTE`."""
        exact = self._exact.get(raw_path)
        if exact is not None:
            hit = exact.get(method)
            if hit is not None:
                return hit
        elif raw_path in self._misses:
            return NO_ROUTE
        found = self._match_walk(method, raw_path)
        if found is NO_ROUTE:
            if len(self._misses) >= _MISS_MEMO_LIMIT:
                self._misses.clear()
            self._misses.add(raw_path)
        return found

    def _match_walk(self, method: str, raw_path: bytes) -> RouteMatch:
        segments = _segments_of(raw_path)
        if segments is None:
            return NO_ROUTE
        # The straight walk: while no node offers a choice, one pass decides, with
        # no recursion and no backing up.  From the first fork on, search properly.
        node = self._root
        values: list[Any] = []
        for i, segment in enumerate(segments):
            if node.forks:
                return self._search(node, segments, i, method, values)
            self.visits += 1
            if node.literal:
                child = node.literal.get(segment)
                if child is None:
                    return NO_ROUTE
                node = child
            elif node.params:
                if not segment:
                    return NO_ROUTE
                converter, node = node.params[0]
                try:
                    values.append(converter.parse(segment))
                except ValueError:
                    return NO_ROUTE
            elif node.rest is not None:
                node = node.rest
                values.append("/".join(segments[i:]))
                break
            else:
                return NO_ROUTE
        self.visits += 1
        methods = node.methods
        found = methods.get(method)
        if found is not None:
            return RouteMatch(found, dict(zip(found.param_names, values, strict=False)) if values else _NO_PARAMS)
        return RouteMatch(None, _NO_PARAMS, frozenset(methods)) if methods else NO_ROUTE

    def _search(self, node: _Node, segments: list[str], i: int, method: str,
                values: list[Any]) -> RouteMatch:
        wrong_method: list[dict[str, Route]] = []
        found = self._find(node, segments, i, method, values, wrong_method)
        if found is not None:
            return RouteMatch(found, dict(zip(found.param_names, values, strict=False)) if values else _NO_PARAMS)
        if wrong_method:
            return RouteMatch(None, _NO_PARAMS, frozenset(m for methods in wrong_method for m in methods))
        return NO_ROUTE

    def _find(self, node: _Node, segments: list[str], i: int, method: str,
              values: list[Any], wrong_method: list[dict[str, Route]]) -> Route | None:
        self.visits += 1
        if i == len(segments):
            methods = node.methods
            if methods:
                found = methods.get(method)
                if found is not None:
                    return found
                wrong_method.append(methods)
            return None
        segment = segments[i]
        child = node.literal.get(segment)
        if child is not None:
            found = self._find(child, segments, i + 1, method, values, wrong_method)
            if found is not None:
                return found
        if segment:   # a parameter never matches an empty segment ("//", trailing "/")
            for converter, child in node.params:
                try:
                    value = converter.parse(segment)
                except ValueError:
                    continue
                values.append(value)
                found = self._find(child, segments, i + 1, method, values, wrong_method)
                if found is not None:
                    return found
                values.pop()
        rest = node.rest
        if rest is not None:
            self.visits += 1
            methods = rest.methods
            found = methods.get(method)
            if found is not None:
                values.append("/".join(segments[i:]))
                return found
            if methods:
                wrong_method.append(methods)
        return None

    def __len__(self) -> int:
        return len(self.routes)
