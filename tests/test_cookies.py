"""Cookies: the Cookie header read leniently; Set-Cookie written for answers, read back
by real cookie jars (httpx, http.cookiejar via TestClient)."""

from __future__ import annotations

import harness
import httpx
import pytest

from server.http.cookies import cookie_header, delete_cookie, parse_cookie_header, set_cookie
from server.http.responses import StreamResponse, json_response

COOKIES = '''
from server import StreamResponse, cookie_header, delete_cookie, json_response, route, set_cookie

@route("/login", methods=["POST"])
def login(request):
    response = json_response({"ok": True})
    set_cookie(response, "session", "abc123", httponly=True, max_age=3600)
    set_cookie(response, "theme", "dark", path="/prefs")
    return response

@route("/whoami")
def whoami(request):
    return {"cookies": request.cookies}

@route("/logout", methods=["POST"])
def logout(request):
    return delete_cookie(json_response({"ok": True}), "session")

@route("/plain")
def plain(request):
    return "hi", 200, [cookie_header("seen", "1")]

@route("/stream")
def stream(request):
    async def lines():
        yield "a\\n"
    return set_cookie(StreamResponse(lines()), "streamed", "yes")
'''


def test_cookie_header_is_parsed_leniently():
    assert parse_cookie_header('a=1; b="two words"; junk; =x; c=d=e; a=2') == \
        {"a": "1", "b": "two words", "c": "d=e"}
    assert parse_cookie_header("") == {}


def test_set_cookie_fields():
    name, value = cookie_header("sid", "x1", max_age=60, secure=True, httponly=True, samesite="strict",
                                domain="example.org")
    assert name == "Set-Cookie"
    parts = value.split("; ")
    assert parts[0] == "sid=x1"
    assert set(parts[1:]) == {"Max-Age=60", "Path=/", "Domain=example.org", "SameSite=Strict",
                              "Secure", "HttpOnly"}
    assert "expires=Thu, 01 Jan 1970 00:00:00 GMT" in \
        delete_cookie(json_response({}), "sid").header_slices()[0].decode()


@pytest.mark.parametrize(("name", "value", "options"), [
    ("bad name", "v", {}),
    ("ok", "has space", {}),
    ("ok", 'quote"', {}),
    ("ok", "semi;colon", {}),
    ("ok", "ünï", {}),
    ("path", "v", {}),                       # a reserved attribute name
    ("ok", "v", {"samesite": "sometimes"}),
    ("ok", "v", {"samesite": "none"}),       # None without Secure is dropped by browsers
    ("ok", "v", {"path": "/a\r\nX-Evil: 1"}),
])
def test_unsendable_cookies_are_refused(name, value, options):
    with pytest.raises(ValueError):
        cookie_header(name, value, **options)


def test_set_cookie_on_a_stream_response_adds_a_header_field():
    async def body():
        yield b""
    response = set_cookie(StreamResponse(body()), "a", "b")
    assert ("Set-Cookie", "a=b; Path=/; SameSite=Lax") in response.headers


async def test_a_browser_like_jar_keeps_and_forgets_cookies(handler_site):
    site = await handler_site({"cookies.py": COOKIES})
    base = f"http://127.0.0.1:{site.port}"
    async with httpx.AsyncClient(base_url=base) as client:
        login = await client.post("/login")
        assert login.status_code == 200
        assert len(login.headers.get_list("set-cookie")) == 2
        assert client.cookies.get("session") == "abc123"
        assert (await client.get("/whoami")).json() == {"cookies": {"session": "abc123"}}   # not /prefs
        assert (await client.get("/plain")).headers["set-cookie"] == "seen=1; Path=/; SameSite=Lax"
        streamed = await client.get("/stream")
        assert streamed.text == "a\n" and client.cookies.get("streamed") == "yes"
        await client.post("/logout")
        assert client.cookies.get("session") is None
        assert "session" not in (await client.get("/whoami")).json()["cookies"]


async def test_request_cookies_from_several_headers(handler_site):
    site = await handler_site({"cookies.py": COOKIES})
    reply = await harness.raw_request(
        site.port, b"GET /whoami HTTP/1.1\r\nHost: t\r\nCookie: a=1; b=2\r\nCookie: c=3; a=9\r\n"
                   b"Connection: close\r\n\r\n")
    assert reply.split(b"\r\n\r\n", 1)[1] == b'{"cookies":{"a":"1","b":"2","c":"3"}}'
