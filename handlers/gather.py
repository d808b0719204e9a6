"""`GET /gather`: one response made of windows of several files, sent without copying.

The body is the bundled stylesheet and home page, each framed by a short text line:
five slices — bytes, a FileRegion, bytes, a FileRegion, bytes.  The files are small,
so the open-file cache has them mapped and the transmitter lends their pages to the
kernel in the same writev as the header lines; no file byte passes through Python.
`?bytes=N` takes only the first N bytes of each file (a window, not a copy).
"""

from pathlib import Path

from server import HTTPError, file_region, gather_response, route

BUNDLED_SITE = Path(__file__).resolve().parent.parent / "static"
PARTS = ("style.css", "index.html")


@route("/gather")
async def gather(request):
    try:
        limit = int(request.query_value("bytes", "-1"))
    except ValueError:
        raise HTTPError(400, "bytes must be a number") from None
    slices = []
    for name in PARTS:
        region = file_region(request, BUNDLED_SITE / name)
        if 0 <= limit < region.count:
            region = file_region(request, BUNDLED_SITE / name, 0, limit)
        slices += [f"----- {name} ({region.count} bytes) -----\n".encode(), region, b"\n"]
    return gather_response(slices, "text/plain; charset=utf-8")
