"""Routing: patterns and converters, precedence, 404/405, mounts, and lookup cost.

The Router is tested directly (match results, work counted in trie node visits),
then end to end over real sockets: 404, 405 with Allow, HEAD, converters, and a
static directory mounted beside the handlers and the static root.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from server.framework.routing import NO_ROUTE, Route, RouteConflict, RouteMatch, Router, add_converter


def handler(request, **params):
    return params


def make_router(*patterns: str | tuple[str, list[str]]) -> Router:
    router = Router()
    for p in patterns:
        pattern, methods = (p, None) if isinstance(p, str) else p
        router.add(Route(pattern, handler, methods, name=pattern))
    return router


def matched(router: Router, path: bytes, method: str = "GET") -> tuple[str, dict] | frozenset[str] | None:
    """(pattern, params) on a hit, the allowed methods on a wrong method, None on a miss."""
    found = router.match(method, path)
    if found.route is not None:
        assert not found.allowed
        return found.route.pattern, found.params
    if found.allowed:
        return found.allowed
    assert found is NO_ROUTE
    return None


# -- patterns and converters ----------------------------------------------------------------

def test_str_parameter_matches_one_segment():
    router = make_router("/hello/{name}")
    assert matched(router, b"/hello/world") == ("/hello/{name}", {"name": "world"})
    assert matched(router, b"/hello/a/b") is None
    assert matched(router, b"/hello/") is None          # a parameter is never empty
    assert matched(router, b"/hello") is None


def test_converters_turn_segments_into_values():
    router = make_router("/i/{n:int}", "/f/{x:float}", "/u/{id:uuid}", "/p/{rest:path}")
    assert matched(router, b"/i/42") == ("/i/{n:int}", {"n": 42})
    assert matched(router, b"/i/-1") is None
    assert matched(router, b"/i/4x") is None
    assert matched(router, b"/i/%EF%BC%94") is None      # a fullwidth digit is not an int
    assert matched(router, b"/f/2.5") == ("/f/{x:float}", {"x": 2.5})
    assert matched(router, b"/f/nan") is None
    u = uuid.uuid4()
    assert matched(router, f"/u/{u}".encode()) == ("/u/{id:uuid}", {"id": u})
    assert matched(router, b"/u/not-a-uuid") is None
    assert matched(router, b"/p/a/b/c.txt") == ("/p/{rest:path}", {"rest": "a/b/c.txt"})
    assert matched(router, b"/p/") == ("/p/{rest:path}", {"rest": ""})


def test_segments_are_percent_decoded_one_by_one():
    router = make_router("/café/{name}")
    assert matched(router, b"/caf%C3%A9/a%2Fb") == ("/café/{name}", {"name": "a/b"})
    assert matched(router, b"/caf%C3%A9/%FF") is None     # not UTF-8: no route


def test_custom_converter():
    add_converter("hex", lambda s: int(s, 16), priority=15)
    router = make_router("/color/{c:hex}")
    assert matched(router, b"/color/ff") == ("/color/{c:hex}", {"c": 255})
    assert matched(router, b"/color/zz") is None


@pytest.mark.parametrize("pattern", ["no-slash", "/a/{b", "/a/x{b}", "/a/{b:nope}",
                                     "/a/{p:path}/tail", "/a/{x}/{x}", "/a/{request}"])
def test_bad_patterns_are_refused_at_registration(pattern):
    with pytest.raises(ValueError):
        Route(pattern, handler)


# -- precedence -------------------------------------------------------------------------------

def test_literal_beats_parameter_and_int_beats_str():
    router = make_router("/users/{name}", "/users/me", "/users/{id:int}")
    assert matched(router, b"/users/me")[0] == "/users/me"
    assert matched(router, b"/users/7")[0] == "/users/{id:int}"
    assert matched(router, b"/users/bob")[0] == "/users/{name}"


def test_lookup_backs_up_when_the_literal_branch_dead_ends():
    router = make_router("/a/b/c", "/a/{x}/d")
    assert matched(router, b"/a/b/d") == ("/a/{x}/d", {"x": "b"})
    assert matched(router, b"/a/b/c") == ("/a/b/c", {})


def test_parameter_beats_catch_all():
    router = make_router("/files/{p:path}", "/files/{name}")
    assert matched(router, b"/files/x")[0] == "/files/{name}"
    assert matched(router, b"/files/x/y")[0] == "/files/{p:path}"


def test_wrong_method_yields_the_allowed_methods():
    router = make_router(("/item/{id:int}", ["GET", "DELETE"]), ("/item/new", ["POST"]))
    assert router.match("PUT", b"/item/3") == RouteMatch(None, {}, frozenset({"GET", "HEAD", "DELETE"}))
    assert router.match("GET", b"/item/new").allowed == frozenset({"POST"})
    assert router.match("GET", b"/item/new").route is None
    assert router.match("GET", b"/nothing") is NO_ROUTE


def test_get_implies_head_and_explicit_head_wins():
    router = Router()
    router.add(Route("/x", lambda r: "get", ["GET"], name="get"))
    router.add(Route("/x", lambda r: "head", ["HEAD"], name="head"))
    assert router.match("HEAD", b"/x").route.name == "head"
    assert router.match("GET", b"/x").route.name == "get"
    with pytest.raises(RouteConflict):
        router.add(Route("/x", lambda r: "again", ["GET"]))


def test_a_parameterless_hit_is_prebuilt_and_follows_later_routes():
    router = make_router(("/plain", ["GET"]))
    first = router.match("GET", b"/plain")
    assert first.route is not None and first.route.pattern == "/plain" and first.params == {}
    assert router.match("GET", b"/plain") is first          # built at add(), not per request
    assert router.match("POST", b"/plain").allowed == frozenset({"GET", "HEAD"})
    router.add(Route("/plain", lambda r: "posted", ["POST"], name="post"))
    assert router.match("POST", b"/plain").route.name == "post"
    assert router.match("GET", b"/plain").route is first.route


def test_same_shape_different_parameter_names_share_a_node():
    router = make_router(("/a/{x}", ["GET"]), ("/a/{y}", ["POST"]))
    assert matched(router, b"/a/1", "GET") == ("/a/{x}", {"x": "1"})
    assert matched(router, b"/a/1", "POST") == ("/a/{y}", {"y": "1"})


# -- lookup cost ------------------------------------------------------------------------------

def _visits(router: Router, path: bytes) -> int:
    before = router.visits
    assert router.match("GET", path).route is not None
    return router.visits - before


@pytest.mark.parametrize("path", [b"/api/r7/items/5", b"/api/r7/items/5/detail", b"/static-ish/r7"])
def test_lookup_work_does_not_grow_with_the_number_of_routes(path):
    """Count trie nodes visited: the same for 10 routes as for 1,000 (no linear scan)."""
    def build(n: int) -> Router:
        router = Router()
        for i in range(n):
            router.add(Route(f"/api/r{i}/items/{{id:int}}", handler))
            router.add(Route(f"/api/r{i}/items/{{id:int}}/detail", handler))
            router.add(Route(f"/api/r{i}/items/{{name}}", handler))
            router.add(Route(f"/static-ish/r{i}", handler))
        return router

    small, large = build(10), build(1000)
    assert len(large) == 4000
    assert _visits(small, path) == _visits(large, path)
    assert _visits(large, path) <= 6


# -- end to end ---------------------------------------------------------------------------------

ROUTES_MODULE = """
from server import route

@route("/items/{id:int}", methods=["GET", "DELETE"])
def item(request, id):
    return {"id": id, "method": request.method}

@route("/items/new", methods=["POST"])
def new_item(request):
    return {"created": True}

@route("/files/{p:path}")
def files(request, p):
    return {"path": p}

@route("/index.html")
def shadow(request):
    return "routes beat the static root"
"""


async def test_404_405_allow_and_head_over_sockets(handler_site, tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "index.html").write_text("static index")
    (root / "plain.txt").write_text("static file")
    (root / "404.html").write_text("<h1>the site's own 404</h1>")
    site = await handler_site({"items.py": ROUTES_MODULE}, root=root)

    reply = await site.get("/items/12")
    assert (reply.status, reply.json()) == (200, {"id": 12, "method": "GET"})
    assert reply.header("Content-Type") == "application/json"

    reply = await site.fetch("DELETE", "/items/12")
    assert reply.json() == {"id": 12, "method": "DELETE"}

    reply = await site.fetch("PUT", "/items/12")
    assert reply.status == 405
    assert sorted(reply.header("Allow").split(", ")) == ["DELETE", "GET", "HEAD", "OPTIONS"]

    reply = await site.get("/items/new")
    assert (reply.status, reply.header("Allow")) == (405, "OPTIONS, POST")

    reply = await site.fetch("HEAD", "/items/3")
    assert reply.status == 200 and reply.body == b""
    assert reply.header("Content-Length") == str(len(b'{"id":3,"method":"HEAD"}'))

    assert (await site.get("/items/abc")).status == 404
    reply = await site.get("/nowhere")
    assert (reply.status, reply.text) == (404, "<h1>the site's own 404</h1>")
    assert (await site.get("/files/a/b%20c.txt")).json() == {"path": "a/b c.txt"}
    # routes beat the static root; files the routes do not claim are still served
    assert (await site.get("/index.html")).text == "routes beat the static root"
    assert (await site.get("/plain.txt")).text == "static file"


MOUNT_MODULE = """
from pathlib import Path
from server import route
from server.framework.routing import mount

mount("/assets", Path(__file__).parent / "assets")

@route("/assets/special")
def special(request):
    return "a route beside the mount"
"""


async def test_mounted_directory_beside_handlers(handler_site, tmp_path: Path):
    directory = tmp_path / "mounted"
    assets = directory / "assets"
    (assets / "css").mkdir(parents=True)
    (assets / "app.css").write_text("body{}")
    (assets / "css" / "index.html").write_text("<p>css dir</p>")
    site = await handler_site({"web.py": MOUNT_MODULE}, directory=directory)

    reply = await site.get("/assets/app.css")
    assert (reply.status, reply.body) == (200, b"body{}")
    assert reply.header("Content-Type").startswith("text/css")
    assert reply.header("ETag")
    assert (await site.get("/assets/special")).text == "a route beside the mount"
    assert (await site.get("/assets/missing.css")).status == 404
    reply = await site.get("/assets/css")
    assert (reply.status, reply.header("Location")) == (301, "/assets/css/")
    assert (await site.get("/assets/css/")).text == "<p>css dir</p>"
    reply = await site.get("/assets")
    assert (reply.status, reply.header("Location")) == (301, "/assets/")
    assert (await site.get("/assets/../web.py")).status in (400, 404)
