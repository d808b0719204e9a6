"""Uploads: `POST /upload/{name}` streams the body to a file; `GET` gives it back.

The body goes to disk chunk by chunk and replaces the file only when it is complete
(server/uploads.py), so an interrupted upload leaves the previous version intact.
Files land in $PAGELOAN_UPLOAD_DIR if set, else in a temporary directory made on the
first request and removed at shut-down (and on reload of this module) — one per
worker process, so set the variable when running with --workers.  The size of one upload
is bounded by the server's body limit (--max-body-size).

    curl -T photo.jpg http://127.0.0.1:8080/upload/photo.jpg
    curl --data-binary @photo.jpg http://127.0.0.1:8080/upload/photo.jpg
    curl http://127.0.0.1:8080/upload/photo.jpg -o copy.jpg

The body is the file: a browser form's multipart/form-data envelope is refused
(415) rather than saved with its boundaries — this example does not parse forms.
"""

import os
import shutil
import tempfile
from pathlib import Path

from server import HTTPError, file_response, on_shutdown, route, save_upload, upload_path


def upload_directory(app):
    configured = os.environ.get("PAGELOAN_UPLOAD_DIR")
    if configured:
        return Path(configured)
    if "upload_dir" not in app.state:
        # Made on first use, so a server that never receives an upload leaves nothing.
        app.state.upload_dir = Path(tempfile.mkdtemp(prefix="pageloan-uploads-"))
    return app.state.upload_dir


@on_shutdown
def remove_temporary_upload_directory(app):
    directory = app.state.pop("upload_dir", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


@route("/upload/{name}", methods=["POST", "PUT"])
async def receive(request, name):
    if (request.headers.get("content-type") or "").lower().startswith("multipart/"):
        raise HTTPError(415, "send the file itself as the body (curl -T or --data-binary)")
    dest = upload_path(upload_directory(request.app), name)   # refuses "..", "/", dotfiles
    size = await save_upload(request, dest)
    return {"saved": dest.name, "bytes": size}, 201


@route("/upload/{name}")
def send_back(request, name):
    return file_response(request, upload_path(upload_directory(request.app), name))


@route("/upload")
def list_uploads(request):
    directory = upload_directory(request.app)
    return sorted(entry.name for entry in os.scandir(directory)
                  if entry.is_file() and not entry.name.startswith("."))
