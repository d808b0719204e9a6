"""What the kernel is asked to do, seen with strace (no mocks of the kernel path)."""

from __future__ import annotations

import re
import socket

import pytest
from harness import tool_marks

pytestmark = tool_marks("strace")

SEND_CALLS = ("sendmsg", "writev", "write", "sendto", "sendfile", "send")


def fetch_raw(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def traced_server(server_process, tmp_path):
    big = tmp_path / "site" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(64 << 20)
        f.seek(12345)
        f.write(b"marker")
    trace = tmp_path / "trace.txt"
    prefix = ["strace", "-f", "-qq", "-s", "80", "-o", str(trace),
              "-e", "trace=openat,read,pread64,readv,preadv,mmap,sendfile,sendmsg,writev,write,sendto,recvfrom"]
    srv = server_process([str(big.parent), "--metrics"], prefix=prefix)
    return srv, trace


def test_large_file_goes_by_sendfile_and_is_never_read(traced_server):
    srv, trace = traced_server
    response = fetch_raw(srv.port, "/big.bin")
    head, _, body = response.partition(b"\r\n\r\n")
    assert len(body) == 64 << 20 and body[12345:12351] == b"marker"
    srv.stop()
    lines = trace.read_text().splitlines()
    fds = {m.group(1) for line in lines
           if (m := re.search(r'openat\(.*big\.bin".*\) = (\d+)$', line))}
    assert fds, "the served file was never opened?"
    reads = [line for line in lines for fd in fds
             if re.search(rf"\b(read|pread64|readv|preadv)\({fd},", line)]
    assert reads == [], f"served file was read into Python: {reads[:3]}"
    sendfiles = [line for line in lines for fd in fds if re.search(rf"sendfile\(\d+, {fd},", line)]
    sent = sum(int(line.rsplit("=", 1)[1]) for line in sendfiles if re.search(r"= \d+$", line))
    assert sent == 64 << 20


def test_small_in_memory_response_is_one_gather_call(traced_server):
    srv, trace = traced_server
    response = fetch_raw(srv.port, "/metrics")
    assert response.startswith(b"HTTP/1.1 200") and b"pageloan_responses_total" in response
    srv.stop()
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "recvfrom(" in line and "GET /metrics" in line)
    pid = lines[start].split()[0]
    conn_fd = lines[start].split("(", 1)[1].split(",", 1)[0]
    sends = []
    for line in lines[start + 1:]:
        fields = line.split()
        if fields[0] != pid or "(" not in fields[1]:
            continue
        call, args = fields[1].split("(", 1)
        if call == "recvfrom":
            break
        if call in SEND_CALLS and args.split(",", 1)[0] == conn_fd:
            sends.append(line)
    assert len(sends) == 1, sends
    assert sends[0].split()[1].startswith(("sendmsg(", "writev("))
    assert int(sends[0].rsplit("=", 1)[1]) == len(response)
