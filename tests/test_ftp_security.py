"""FTP access rules: bounce refused, traversal refused, read-only means read-only,
failed logins slowed, connections per address limited, and every wait bounded.

The service runs in the test's own event loop (plain asyncio) so timeouts can be
made tiny; one test uses the real subprocess to check the default login delay.
"""

from __future__ import annotations

import asyncio
import ftplib
import logging
import os
import re
import socket
import time

import pytest
from polling import until
from test_ftp_support import (
    PASSWORD,
    AsyncControl,
    FtpProcess,
    InProcessFtp,
    partial_files,
    users_file,
    write_random,
)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("inside\n")
    (root / "keep.txt").write_text("keep me\n")
    (root / "emptydir").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    os.symlink(outside, root / "out")                       # a directory link leaving the root
    os.symlink(outside / "secret.txt", root / "outfile")    # a file link leaving the root
    os.symlink("sub/a.txt", root / "inlink")                # a link that stays inside
    return root


@pytest.fixture
async def ftp(tree):
    servers = InProcessFtp(tree)
    yield servers
    await servers.close_all()


# -- bounce --------------------------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("command, code, logged", [
    ("PORT 127,0,0,2,19,137", 501, "refused FTP bounce"),    # another address, even on loopback
    ("PORT 192,0,2,1,19,137", 501, "refused FTP bounce"),
    ("EPRT |1|127.0.0.2|5001|", 501, "refused FTP bounce"),
    ("EPRT |1|198.51.100.7|5001|", 501, "refused FTP bounce"),
    ("PORT 127,0,0,1,0,25", 501, "refused PORT to privileged port 25"),   # own address, port < 1024
    ("EPRT |1|127.0.0.1|80|", 501, "refused PORT to privileged port 80"),
    ("EPRT |2|::1|5001|", 522, None),                         # wrong family for this connection
    ("EPRT |3|x|1|", 522, None),
    ("PORT 1,2,3", 501, None),
    ("PORT 127,0,0,1,300,1", 501, None),
    ("EPRT garbage", 501, None),
])
async def test_port_and_eprt_refuse_bounce(ftp, caplog, command, code, logged):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    with caplog.at_level(logging.WARNING, logger="pageloan.ftp"):
        got, text = await control.cmd(command)
    assert got == code, text
    if logged:
        assert logged in caplog.text
    # And no data connection was set up: a transfer now has nothing to use.
    got, text = await control.cmd("RETR keep.txt")
    assert got == 425, text
    await control.close()


@pytest.mark.asyncio
async def test_port_to_own_address_works(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    got, text = await control.cmd(f"PORT 127,0,0,1,{port >> 8},{port & 255}")
    assert got == 200, text
    got, text = await control.cmd("RETR keep.txt")
    assert got == 150, text
    loop = asyncio.get_running_loop()
    conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
    data = b""
    for _ in range(100):
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            break
        data += chunk
    conn.close()
    listener.close()
    assert data == b"keep me\n"
    assert (await control.read_reply())[0] == 226
    await control.close()


@pytest.mark.asyncio
async def test_passive_port_refuses_other_addresses(ftp, caplog):
    service = await ftp.start(data_timeout=3)
    control = await AsyncControl.connect(service.port)
    await control.login()
    port = await control.pasv_port()
    loop = asyncio.get_running_loop()
    thief = socket.socket()
    thief.setblocking(False)
    thief.bind(("127.0.0.2", 0))                  # a different host, as far as TCP can tell
    await loop.sock_connect(thief, ("127.0.0.1", port))
    with caplog.at_level(logging.WARNING, logger="pageloan.ftp"):
        await control.send("RETR keep.txt")
        assert (await control.read_reply())[0] == 150
        stolen = await asyncio.wait_for(loop.sock_recv(thief, 100), 5)
        assert stolen == b""                      # closed without a byte
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b"keep me\n"
        writer.close()
    assert (await control.read_reply())[0] == 226
    assert "refused passive data connection from 127.0.0.2" in caplog.text
    thief.close()
    await control.close()


@pytest.mark.asyncio
async def test_passive_ports_come_from_the_range(ftp):
    base = 40000 + os.getpid() % 20000
    service = await ftp.start(passive_ports=(base, base + 9))
    control = await AsyncControl.connect(service.port)
    await control.login()
    for _ in range(5):
        assert base <= await control.pasv_port() <= base + 9
    code, text = await control.cmd("EPSV")
    assert code == 229 and base <= int(re.search(r"\|\|\|(\d+)\|", text).group(1)) <= base + 9
    await control.close()


# -- traversal -----------------------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("command", [
    "CWD ..", "CWD ../", "CWD /..", "CWD /../..", "CWD sub/../..", "CWD ../root",
    "CDUP", "CWD out", "CWD /out/", "CWD sub\\..\\..",
    "SIZE ../secret.txt", "SIZE /../secret.txt", "SIZE sub/../../secret.txt",
    "SIZE ..\\secret.txt", "SIZE out/secret.txt", "SIZE outfile", "MDTM outfile",
    "MLST ..", "MLST out",
])
async def test_paths_outside_the_root_are_refused(ftp, command):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    code, text = await control.cmd(command)
    assert code == 550, text
    assert (await control.cmd("PWD"))[1] == '257 "/" is the current directory.'
    await control.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("command", [
    "RETR ../secret.txt", "RETR /../secret.txt", "RETR sub/../../secret.txt",
    "RETR out/secret.txt", "RETR outfile", "LIST ..", "LIST out", "NLST /../..", "MLSD out",
    "STOR ../planted.txt", "STOR out/planted.txt", "APPE ../secret.txt",
])
async def test_transfers_outside_the_root_are_refused(ftp, tree, command):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    await control.pasv_port()
    code, text = await control.cmd(command)
    assert code == 550, text
    assert (tree.parent / "secret.txt").read_text() == "secret\n"
    assert not (tree.parent / "planted.txt").exists()
    assert not (tree.parent / "outside" / "planted.txt").exists()
    await control.close()


@pytest.mark.asyncio
async def test_namespace_changes_outside_the_root_are_refused(ftp, tree):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    for command in ["MKD ../made", "MKD out/made", "RMD ..", "RMD /", "DELE ../secret.txt",
                    "DELE outfile/..", "RNFR ../secret.txt", "RNFR /"]:
        code, text = await control.cmd(command)
        assert code == 550, (command, text)
    assert (await control.cmd("RNFR keep.txt"))[0] == 350
    assert (await control.cmd("RNTO ../stolen.txt"))[0] == 550
    assert (tree / "keep.txt").exists() and not (tree.parent / "stolen.txt").exists()
    assert not (tree.parent / "made").exists() and not (tree.parent / "outside" / "made").exists()
    await control.close()


@pytest.mark.asyncio
async def test_moving_inside_the_root_still_works(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    assert (await control.cmd("CWD sub"))[0] == 250
    assert (await control.cmd("PWD"))[1] == '257 "/sub" is the current directory.'
    assert (await control.cmd("SIZE ../inlink"))[1] == "213 7"     # a link that stays inside
    assert (await control.cmd("CWD .."))[0] == 250
    assert (await control.cmd("CWD ./sub/../sub/"))[0] == 250
    assert (await control.cmd("CDUP"))[0] == 250
    assert (await control.cmd("CDUP"))[0] == 550                   # and not one step further
    await control.close()


@pytest.mark.asyncio
async def test_listing_hides_links_that_leave_the_root(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    port = await control.pasv_port()
    await control.send("NLST")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    names = (await reader.read()).decode().split("\r\n")
    writer.close()
    assert (await control.read_reply())[0] == 150
    assert (await control.read_reply())[0] == 226
    assert sorted(n for n in names if n) == ["emptydir", "inlink", "keep.txt", "sub"]
    await control.close()


# -- read-only accounts ----------------------------------------------------------------------

WRITE_COMMANDS = ["STOR new.txt", "APPE keep.txt", "DELE keep.txt", "MKD made", "RMD emptydir",
                  "RNFR keep.txt", "RNTO renamed.txt", "XMKD made", "XRMD emptydir"]


@pytest.mark.asyncio
@pytest.mark.parametrize("user, password", [("anonymous", "guest@example.org"), ("ftp", ""),
                                            ("bob", PASSWORD)])
async def test_read_only_accounts_cannot_write(ftp, tree, user, password):
    service = await ftp.start(anonymous=True)
    control = await AsyncControl.connect(service.port)
    await control.cmd(f"USER {user}")
    assert (await control.cmd(f"PASS {password}".rstrip()))[0] == 230
    await control.pasv_port()
    for command in WRITE_COMMANDS:
        code, text = await control.cmd(command)
        assert code == 550, (command, text)
    assert (tree / "keep.txt").read_text() == "keep me\n"
    assert (tree / "emptydir").is_dir()
    assert not (tree / "new.txt").exists() and not (tree / "made").exists()
    # Reading still works.
    assert (await control.cmd("SIZE keep.txt"))[1] == "213 8"
    await control.close()


@pytest.mark.asyncio
async def test_anonymous_is_refused_unless_enabled(ftp):
    service = await ftp.start(anonymous=False)
    control = await AsyncControl.connect(service.port)
    assert (await control.cmd("USER anonymous"))[0] == 331     # same answer as for any name
    assert (await control.cmd("PASS guest@"))[0] == 530
    await control.close()


@pytest.mark.asyncio
async def test_anonymous_curl_upload_is_refused(ftp, tree, tmp_path):
    import shutil
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    service = await ftp.start(anonymous=True)
    source = write_random(tmp_path / "up.bin", 100_000)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-T", str(source), f"ftp://127.0.0.1:{service.port}/anon.bin",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert b"550" in err
    assert not (tree / "anon.bin").exists() and partial_files(tree) == []


# -- failed logins ---------------------------------------------------------------------------

async def _timed_login(control: AsyncControl, user: str, password: str) -> tuple[int, float]:
    await control.cmd(f"USER {user}")
    started = time.monotonic()
    code, _text = await control.cmd(f"PASS {password}", timeout=20)
    return code, time.monotonic() - started


@pytest.mark.asyncio
@pytest.mark.slow
async def test_failed_logins_are_delayed_more_each_time(ftp):
    service = await ftp.start(login_delay=0.3)
    control = await AsyncControl.connect(service.port)
    code, first = await _timed_login(control, "alice", "wrong")
    assert code == 530 and first >= 0.3
    code, second = await _timed_login(control, "alice", "wrong again")
    assert code == 530 and second >= 0.6
    # A new connection from the same address does not start over.
    other = await AsyncControl.connect(service.port)
    code, third = await _timed_login(other, "nobody", "x")
    assert code == 530 and third >= 1.2
    code, good = await _timed_login(other, "alice", PASSWORD)
    assert code == 230 and good < 0.3
    code, after = await _timed_login(control, "alice", "wrong")  # success reset the count
    assert code == 530 and 0.3 <= after < 0.6
    await control.close()
    await other.close()


@pytest.mark.asyncio
async def test_too_many_failed_logins_close_the_session(ftp):
    service = await ftp.start(login_delay=0.01)
    control = await AsyncControl.connect(service.port)
    for _ in range(5):
        assert (await _timed_login(control, "alice", "wrong"))[0] == 530
    with pytest.raises(EOFError):
        await control.cmd("USER alice")
    await control.close()


@pytest.mark.slow
def test_default_failed_login_delay_is_a_second(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    accounts = users_file(tmp_path / "users", {"alice": "rw"})
    server = FtpProcess(root, tmp_path / "server.log", "--ftp-users", str(accounts))
    try:
        client = ftplib.FTP(timeout=30)
        client.connect("127.0.0.1", server.port)
        started = time.monotonic()
        with pytest.raises(ftplib.error_perm, match="530"):
            client.login("alice", "not the password")
        assert time.monotonic() - started >= 1.0
        client.close()
    finally:
        server.stop()
    assert "failed FTP login for 'alice'" in server.log()


# -- limits and timeouts ---------------------------------------------------------------------

@pytest.mark.asyncio
async def test_connections_per_address_are_limited(ftp):
    service = await ftp.start(max_per_ip=2)
    first = await AsyncControl.connect(service.port)
    second = await AsyncControl.connect(service.port)
    assert first.greeting[0] == second.greeting[0] == 220
    third = await AsyncControl.connect(service.port)
    assert third.greeting[0] == 421
    with pytest.raises(EOFError):
        await third.read_reply()
    await first.cmd("QUIT")
    await first.close()
    # The slot frees once the server has seen the QUIT.
    await until(lambda: service.sessions < 2, "the QUIT session's slot to free")
    fourth = await AsyncControl.connect(service.port)
    assert fourth.greeting[0] == 220
    for control in (second, third, fourth):
        await control.close()


@pytest.mark.asyncio
async def test_idle_control_connection_gets_421(ftp):
    service = await ftp.start(idle_timeout=0.3)
    control = await AsyncControl.connect(service.port)
    started = time.monotonic()
    code, _text = await control.read_reply(timeout=5)
    assert code == 421 and time.monotonic() - started >= 0.3
    with pytest.raises(EOFError):
        await control.read_reply()
    await control.close()


@pytest.mark.asyncio
async def test_data_connection_never_made_gets_425(ftp):
    service = await ftp.start(data_timeout=0.3)
    control = await AsyncControl.connect(service.port)
    await control.login()
    await control.pasv_port()
    assert (await control.cmd("RETR keep.txt"))[0] == 150
    assert (await control.read_reply(timeout=5))[0] == 425
    # Active mode to a port nobody listens on fails the same way.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    assert (await control.cmd(f"EPRT |1|127.0.0.1|{port}|"))[0] == 200
    assert (await control.cmd("RETR keep.txt"))[0] == 150
    assert (await control.read_reply(timeout=5))[0] == 425
    assert (await control.cmd("NOOP"))[0] == 200
    await control.close()


@pytest.mark.asyncio
async def test_stalled_download_gets_426(ftp, tree):
    with open(tree / "huge.bin", "wb") as f:
        f.truncate(64 << 20)            # sparse: costs no disk, sendfile still sends it all
    service = await ftp.start(data_timeout=0.5)
    control = await AsyncControl.connect(service.port)
    await control.login()
    port = await control.pasv_port()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", port))
    assert (await control.cmd("RETR huge.bin"))[0] == 150
    code, text = await control.read_reply(timeout=10)         # never read a byte
    assert code == 426, text
    stalled.close()
    assert (await control.cmd("NOOP"))[0] == 200
    await control.close()


@pytest.mark.asyncio
async def test_stalled_upload_gets_426_and_leaves_nothing(ftp, tree):
    service = await ftp.start(data_timeout=0.5)
    control = await AsyncControl.connect(service.port)
    await control.login()
    port = await control.pasv_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await control.cmd("STOR keep.txt"))[0] == 150
    writer.write(b"half an upload")
    await writer.drain()
    code, text = await control.read_reply(timeout=10)         # then nothing more
    assert code == 426, text
    writer.close()
    assert (tree / "keep.txt").read_text() == "keep me\n"
    assert partial_files(tree) == []
    await control.close()
