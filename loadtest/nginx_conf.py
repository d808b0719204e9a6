"""The nginx peer's configuration, written into a temporary directory per run.

One worker, sendfile and TCP_NOPUSH on, no access log, keep-alive long enough that wrk
never reconnects: the configuration nginx would be given to serve static files fast.
Every path nginx writes to (pid, error log, temp dirs) is inside the run's directory,
so it runs the same as root or not; `user root` is set only as root, so the worker can
read a document root under root's home.
"""

from __future__ import annotations

import os
from pathlib import Path

MIME_TYPES = {
    "text/html": "html", "text/css": "css", "application/javascript": "js",
    "image/png": "png", "application/json": "json", "application/octet-stream": "bin",
}
JSON_BODY = '{"message":"Hello, World!"}'


def render(port: int, docroot: Path, rundir: Path, open_file_cache: bool = False) -> str:
    """Return the text of nginx.conf for one server on 127.0.0.1:port."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    types = "".join(f"        {mime} {ext};\n" for mime, ext in MIME_TYPES.items())
    temps = "".join(
        f"    {kind}_temp_path {rundir / (kind + '_temp')};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    ofc = "    open_file_cache max=1000 inactive=20s;\n" if open_file_cache else ""
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {rundir / 'nginx.pid'};\n"
        f"error_log {rundir / 'error.log'} warn;\n"
        "events {\n    worker_connections 4096;\n}\n"
        "http {\n"
        f"    types {{\n{types}    }}\n"
        "    default_type application/octet-stream;\n"
        "    sendfile on;\n    tcp_nopush on;\n    tcp_nodelay on;\n"
        "    keepalive_requests 100000;\n    keepalive_timeout 65;\n"
        "    access_log off;\n"
        f"{temps}{ofc}"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        f"        root {docroot};\n"
        "        location = /json {\n"
        "            default_type application/json;\n"
        f"            return 200 '{JSON_BODY}';\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def write_config(port: int, docroot: Path, rundir: Path, open_file_cache: bool = False) -> Path:
    """Write nginx.conf into rundir and return its path."""
    conf = rundir / "nginx.conf"
    conf.write_text(render(port, docroot, rundir, open_file_cache))
    return conf


def argv(nginx: str, conf: Path, rundir: Path) -> list[str]:
    """The command line: prefix and error log in rundir, so nothing touches /var."""
    return [nginx, "-p", str(rundir), "-e", str(rundir / "error.log"), "-c", str(conf)]
