"""Quick routes: a lone GET of a parameterless route gets the general path's answer.

For a keep-alive HTTP/1.1 GET that arrives alone, the session calls a never-suspending
`async def` route's handler without routing, and a dict it returns goes out as the
JSON answer's slices (framework/application.py QuickRoute, http/session.py).  These
tests pin, over real sockets, that the answer is byte for byte what the general path
(pipelined requests, HEAD) sends, that the handler sees its own request, that every
other result and every exception is answered as anywhere else, that context
variables stay per request, and that quick routes are off wherever the general path
must run: request hooks, an access log, handlers that suspend, routes reinstalled.
"""

from __future__ import annotations

import asyncio
import json
import logging

from harness import RawClient, without_date
from harness import browser_headers as browser

from server.framework.application import Application
from server.framework.routing import Route, Router

HANDLERS = {"api.py": """
    import contextvars
    from server import route
    from server.http.errors import HTTPError

    SEEN = contextvars.ContextVar("seen", default="unset")

    @route("/hello")
    async def hello(request):
        return {"message": "Hello, World!"}

    @route("/echo")
    async def echo(request):
        return {"query": request.query_string, "cookie": request.cookies.get("session"),
                "agent": request.headers.get("user-agent")}

    @route("/text")
    async def text(request):
        return "plain"

    @route("/missing")
    async def missing(request):
        raise HTTPError(404, "not here")

    @route("/broken")
    async def broken(request):
        raise ValueError("boom")

    @route("/context")
    async def context(request):
        before = SEEN.get()
        SEEN.set(request.query_string)
        return {"before": before}

    @route("/slow")
    async def slow(request):
        import asyncio
        await asyncio.sleep(0)
        return {"slow": True}
"""}


def _quick(site, path: bytes):
    return site.app.quick_routes.get(path)


async def test_a_lone_get_gets_the_general_answer_byte_for_byte(handler_site):
    site = await handler_site(HANDLERS)
    quick = _quick(site, b"/hello")
    assert quick is not None

    def exchange():
        with RawClient(site.port) as c:
            lone = [c.request("GET", f"/hello?v={n}", browser(n)) for n in range(5)]
            # Two requests in one read take the general path (routing, a Message).
            c.send_raw(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello?x HTTP/1.1\r\nHost: a\r\n\r\n")
            piped = [c.read_response(), c.read_response()]
            head = c.request("HEAD", "/hello", browser(9))
            return lone, piped, head

    lone, piped, head = await asyncio.to_thread(exchange)
    assert quick.hits == 5
    for r in lone + piped:
        assert r.status == 200 and r.body == b'{"message":"Hello, World!"}'
        assert without_date(r) == without_date(piped[0])
        assert r.header("date")
    assert head.status == 200 and head.body == b""
    assert without_date(head) == without_date(piped[0])


async def test_the_handler_sees_its_own_request(handler_site):
    site = await handler_site(HANDLERS)

    def exchange():
        with RawClient(site.port) as c:
            return [c.request("GET", f"/echo?n={n}", browser(n)) for n in range(4)]

    for n, r in enumerate(await asyncio.to_thread(exchange)):
        assert json.loads(r.body) == {"query": f"n={n}", "cookie": str(n), "agent": browser(n)[0][1]}
    assert _quick(site, b"/echo").hits == 4


async def test_other_results_and_exceptions_are_answered_as_anywhere(handler_site, caplog):
    site = await handler_site(HANDLERS)

    def exchange():
        with RawClient(site.port) as c:
            return [c.request("GET", path, browser(1)) for path in
                    ("/text", "/missing", "/broken", "/hello")]

    with caplog.at_level(logging.ERROR, logger="pageloan.handlers"):
        text, missing, broken, after = await asyncio.to_thread(exchange)
    assert (text.status, text.body, text.header("content-type")) == (200, b"plain", "text/plain; charset=utf-8")
    assert missing.status == 404
    assert broken.status == 500 and b"boom" not in broken.body
    assert any("boom" in r.getMessage() for r in caplog.records)
    assert after.status == 200                           # the connection carries on
    assert all(_quick(site, p).hits == 1 for p in (b"/text", b"/missing", b"/broken", b"/hello"))


async def test_context_variables_stay_with_their_request(handler_site):
    site = await handler_site(HANDLERS)

    def exchange():
        with RawClient(site.port) as c:
            return [json.loads(c.request("GET", f"/context?{n}", browser(n)).body) for n in range(4)]

    assert await asyncio.to_thread(exchange) == [{"before": "unset"}] * 4
    assert _quick(site, b"/context").hits == 4


async def test_handlers_that_suspend_are_not_quick(handler_site):
    site = await handler_site(HANDLERS)
    assert _quick(site, b"/slow") is None
    assert (await site.get("/slow")).json() == {"slow": True}


async def test_request_hooks_see_every_request(handler_site):
    hook = (
        "from server.framework.hooks import before_request\n"
        "SEEN = []\n"
        "@before_request\n"
        "def seen(request):\n"
        "    SEEN.append(request.target)\n"
    )
    site = await handler_site({**HANDLERS, "seen.py": hook})
    assert site.app.quick_routes == {}
    for n in range(4):
        assert (await site.get(f"/hello?{n}")).status == 200
    assert len(site.app.hooks.before_request[0].__globals__["SEEN"]) == 4


async def test_an_access_log_sees_every_request(serve, caplog):
    async def hello(request):
        return {"hello": 1}
    app = Application(router=Router([Route("/hello", hello)]))
    assert b"/hello" in app.quick_routes
    running = await serve(app=app, access_log="-")

    def fetch() -> list[int]:
        with RawClient(running.port) as c:
            return [c.request("GET", f"/hello?v={n}", browser(n)).status for n in range(5)]

    with caplog.at_level(logging.INFO, logger="pageloan.access"):
        assert await asyncio.to_thread(fetch) == [200] * 5
    lines = [r.getMessage() for r in caplog.records if r.name == "pageloan.access"]
    assert len(lines) == 5
    assert app.quick_routes[b"/hello"].hits == 0


async def test_reinstalled_routes_replace_the_quick_ones(serve):
    async def old(request):
        return {"version": 1}

    async def new(request):
        return {"version": 2}

    app = Application(router=Router([Route("/v", old)]))
    running = await serve(app=app)

    def get():
        with RawClient(running.port) as c:
            return json.loads(c.request("GET", "/v", browser(1)).body)

    assert await asyncio.to_thread(get) == {"version": 1}
    quick = app.quick_routes
    app.install(Router([Route("/v", new)]))
    assert app.quick_routes is quick                 # the one dict sessions keep
    assert await asyncio.to_thread(get) == {"version": 2}
    app.install(Router([Route("/v", new, methods=["POST"])]))
    assert b"/v" not in app.quick_routes
    with RawClient(running.port) as c:
        assert (await asyncio.to_thread(c.request, "GET", "/v", browser(2))).status == 405


async def test_metrics_stays_the_servers_own(handler_site):
    site = await handler_site({"m.py": """
        from server import route
        @route("/metrics")
        async def mine(request):
            return {"mine": True}
    """}, metrics=True)
    assert b"/metrics" not in site.app.quick_routes
    reply = await site.get("/metrics")
    assert reply.status == 200 and b"mine" not in reply.body


async def test_a_subclass_that_answers_its_own_way_keeps_every_request(serve):
    async def hello(request):
        return {"hello": 1}

    class Stamped(Application):
        def __call__(self, request):
            answer = super().__call__(request)
            answer.push(b"X-Stamped: yes\r\n")
            return answer

    app = Stamped(router=Router([Route("/hello", hello)]))
    assert app.quick_routes == {}
    running = await serve(app=app)

    def fetch():
        with RawClient(running.port) as c:
            return [c.request("GET", f"/hello?{n}", browser(n)).header("x-stamped") for n in range(3)]

    assert await asyncio.to_thread(fetch) == ["yes"] * 3
