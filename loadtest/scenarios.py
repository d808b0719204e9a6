"""The scenarios: what is requested, over how many connections, and what counts.

Each scenario is data: a path (or FTP transfer), a connection count, an optional wrk Lua
script from this directory, the headline metric (req/s, or MB/s for bulk transfers) and
what a correct response looks like, so a server that answers differently (a 200 where a
206 was asked) is flagged instead of silently winning.
"""

from __future__ import annotations

from dataclasses import dataclass

RANGES = "bytes=0-99,1000-1999,50000-59999,500000-500999"


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    protocol: str = "http"          # "http" (wrk), "asgi" (wrk, the ASGI bench app) or "ftp" (curl)
    path: str = "/1k.bin"
    connections: int = 64
    script: str | None = None       # a Lua script in loadtest/
    script_args: tuple[str, ...] = ()
    metric: str = "req_per_s"       # the figure the ratio is taken on
    expect: str = "file"            # file | ranges | json | site | retr | stor | br
    timeout_s: int = 8              # wrk --timeout
    big_file: bool = False          # needs 256m.bin
    # Whether the requests repeat byte for byte, so that a cache of identical
    # requests (a replay memo) could answer them without parsing: the report says so.
    repeats: bool = True
    # ASGI only: pageloan is given the docroot as ROOT beside --asgi, so its static
    # site answers the files it has before the application sees the request.
    asgi_root: bool = False

    @property
    def replayable(self) -> str:
        return ("yes: every request is byte-identical to earlier ones" if self.repeats
                else "no: no two requests alike (counter in query and Cookie)")


BROWSER_SITE = ("/index.html", "/style.css", "/app.js", "/logo.png", "/about.html")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("browser-1k", "GET /1k.bin as a browser sends it: its header set, a counter in "
             "query and Cookie", path="/1k.bin", script="browser.lua", repeats=False),
    Scenario("browser-304", "GET /1k.bin as a browser revalidates its cached copy: browser-1k "
             "plus If-None-Match and If-Modified-Since with the server's own validators (304)",
             path="/1k.bin", script="browser.lua", repeats=False, expect="revalidate"),
    Scenario("browser-64k", "GET /64k.bin as a browser sends it (as browser-1k)",
             path="/64k.bin", script="browser.lua", repeats=False),
    Scenario("browser-smallsite", "a browser fetching a five-file site (html, css, js, png), "
             "no two requests alike", path="/index.html", script="browser.lua",
             script_args=BROWSER_SITE, expect="site", repeats=False),
    Scenario("browser-json", "GET /json from a handler, browser headers, no two requests alike",
             path="/json", script="browser.lua", expect="json", repeats=False),
    Scenario("1k", "GET /1k.bin: per-request overhead, tiny body", path="/1k.bin"),
    Scenario("1k-unique", "GET /1k.bin?n=<counter>: no two requests alike (wrk's bare headers)",
             path="/1k.bin", script="unique.lua", repeats=False),
    Scenario("64k", "GET /64k.bin: a mid-size file", path="/64k.bin"),
    Scenario("1m", "GET /1m.bin: a large file", path="/1m.bin", connections=16),
    Scenario("256m", "GET /256m.bin: bulk transfer rate", path="/256m.bin", connections=4,
             metric="mb_per_s", timeout_s=60, big_file=True),
    Scenario("pipeline", "GET /1k.bin pipelined 16 deep: parsing and write batching",
             path="/1k.bin", script="pipeline.lua", script_args=("16",)),
    Scenario("multirange", f"GET /1m.bin with Range: {RANGES}: multipart/byteranges",
             path="/1m.bin", script="ranges.lua", script_args=(RANGES,), expect="ranges"),
    Scenario("smallsite", "GET cycling through a five-file site (html, css, js, png)",
             path="/index.html", script="smallsite.lua", expect="site"),
    Scenario("browser-text", "GET /text-48k.txt as a browser asks, Accept-Encoding: identity (uncompressed)",
             path="/text-48k.txt", script="browser_text.lua", script_args=("identity",)),
    Scenario("browser-br", "GET /text-48k.txt as a browser asks, Accept-Encoding: br (brotli, built once)",
             path="/text-48k.txt", script="browser_text.lua", script_args=("br",), expect="br"),
    Scenario("json", "GET /json from a handler: the framework's own overhead",
             path="/json", expect="json"),
    # The same Starlette app (peers/asgi_bench_app.py) on every ASGI server; browser-like requests.
    Scenario("asgi-json", "ASGI: GET /json, a Starlette JSONResponse, as a page's fetch() asks",
             protocol="asgi", path="/json", script="asgi_browser.lua", script_args=("fetch",),
             expect="json"),
    Scenario("asgi-browser-json", "ASGI: GET /json, a Starlette JSONResponse, browser headers, "
             "no two requests alike", protocol="asgi", path="/json", script="browser.lua",
             expect="json", repeats=False),
    Scenario("asgi-static-1k", "ASGI: GET /1k.bin from Starlette StaticFiles, as an <img> asks",
             protocol="asgi", path="/1k.bin", script="asgi_browser.lua", script_args=("image",)),
    Scenario("asgi-static-1k-root", "ASGI: GET /1k.bin as asgi-static-1k, with ROOT beside --asgi "
             "(pageloan's static site answers first; uvicorn and granian: StaticFiles)",
             protocol="asgi", path="/1k.bin", script="asgi_browser.lua", script_args=("image",),
             asgi_root=True),
    Scenario("asgi-file-1m", "ASGI: GET /1m.bin, a Starlette FileResponse of 1 MiB",
             protocol="asgi", path="/1m.bin", connections=16, script="asgi_browser.lua",
             script_args=("document",)),
    Scenario("asgi-file-256m", "ASGI: GET /256m.bin, a Starlette FileResponse: bulk rate",
             protocol="asgi", path="/256m.bin", connections=4, metric="mb_per_s", timeout_s=60,
             big_file=True),
    Scenario("ftp-retr", "FTP RETR of 256m.bin with curl, one transfer at a time",
             protocol="ftp", path="/256m.bin", connections=1, metric="mb_per_s",
             expect="retr", big_file=True),
    Scenario("ftp-stor", "FTP STOR of a 256 MiB file with curl, one transfer at a time",
             protocol="ftp", path="/upload.bin", connections=1, metric="mb_per_s",
             expect="stor", big_file=True),
)
BY_NAME: dict[str, Scenario] = {s.name: s for s in SCENARIOS}
