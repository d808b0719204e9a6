"""Uploads: `POST /upload/{name}` streams the body to a file; `GET` gives it back.

The body goes to disk chunk by chunk and replaces the file only when it is complete
(server/framework/uploads.py), so an interrupted upload leaves the previous version
intact.  Files land in $PAGELOAN_UPLOAD_DIR if set, else in a temporary directory
made on the first request and removed at shut-down (and on reload of this module) —
one per worker process, so set the variable when running with --workers.  The size
of one upload is bounded by the server's body limit (--max-body-size).

    curl -T photo.jpg http://127.0.0.1:8080/upload/photo.jpg
    curl --data-binary @photo.jpg http://127.0.0.1:8080/upload/photo.jpg
    curl -F file=@photo.jpg http://127.0.0.1:8080/upload/photo.jpg
    curl -F a=@one.txt -F b=@two.txt http://127.0.0.1:8080/upload
    curl http://127.0.0.1:8080/upload/photo.jpg -o copy.jpg

A browser form (multipart/form-data) is parsed with `request.form()`: each file part
is streamed to a hidden temporary file in the upload directory and renamed into
place, so what is saved is the file, never the form's envelope.  `POST
/upload/{name}` saves the form's `file` part (or its only file part) as `name`;
`POST /upload` saves every file part under its own file name.
"""

import os
import shutil
import tempfile
from pathlib import Path

from server import (
    HTTPError,
    UploadFile,
    file_response,
    on_shutdown,
    route,
    save_upload,
    upload_path,
)


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


def is_form(request):
    return (request.headers.get("content-type") or "").lower().startswith("multipart/form-data")


@route("/upload/{name}", methods=["POST", "PUT"])
async def receive(request, name):
    directory = upload_directory(request.app)
    dest = upload_path(directory, name)        # refuses "..", "/", dotfiles
    if not is_form(request):
        size = await save_upload(request, dest)
        return {"saved": dest.name, "bytes": size}, 201
    with await request.form(upload_dir=directory) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            files = form.files
            if len(files) != 1:
                raise HTTPError(400, "send one file, as the form field 'file' (curl -F file=@name)")
            upload = files[0]
        await upload.save(dest)
        return {"saved": dest.name, "bytes": upload.size}, 201


@route("/upload", methods=["POST"])
async def receive_form(request):
    if not is_form(request):
        raise HTTPError(415, "send a multipart form (curl -F file=@name), or POST to /upload/{name}")
    directory = upload_directory(request.app)
    saved = []
    with await request.form(upload_dir=directory) as form:
        for upload in form.files:
            dest = upload_path(directory, upload.filename)
            await upload.save(dest)
            saved.append({"saved": dest.name, "bytes": upload.size})
    if not saved:
        raise HTTPError(400, "the form has no file part")
    return saved, 201


@route("/upload/{name}")
async def send_back(request, name):
    return file_response(request, upload_path(upload_directory(request.app), name))


@route("/upload")
async def list_uploads(request):
    directory = upload_directory(request.app)
    return sorted(entry.name for entry in os.scandir(directory)
                  if entry.is_file() and not entry.name.startswith("."))
