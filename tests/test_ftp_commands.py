"""FTP commands one by one: reply codes for good, bad and unknown input, listings in
the formats clients parse, namespace changes, configuration from the command line,
and the service's start/close contract.  The service runs in the test's own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import time

import pytest
from test_ftp_support import PASSWORD, AsyncControl, InProcessFtp, users_file

from server.ftp import FtpConfig, add_ftp_arguments, ftp_config_from_args, start_ftp
from server.ftp.commands import COMMANDS, Command


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("alpha\n")
    (root / "ten.bin").write_bytes(b"0123456789")
    (root / ".pageloan-hidden").write_text("")     # a dotfile that is *not* a partial upload
    (root / ".ten.bin.pageloan-0badc0de.part").write_text("an upload in progress")
    return root


@pytest.fixture
async def ftp(tree):
    servers = InProcessFtp(tree)
    yield servers
    await servers.close_all()


@pytest.fixture
async def alice(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.login()
    yield control
    await control.close()


async def _fetch_listing(control: AsyncControl, command: str) -> str:
    port = await control.pasv_port()
    await control.send(command)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert (await control.read_reply())[0] == 150
    assert (await control.read_reply())[0] == 226
    return data.decode("utf-8")


# -- reply codes -----------------------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("command, code", [
    ("XYZZY", 500), ("", None), ("GET / HTTP/1.1", 500), ("LIST\x00", 500),
    ("ACCT billing", 502), ("SITE CHMOD 777 ten.bin", 502), ("STOU", 502), ("REIN", 502),
    ("AUTH TLS", 502), ("SMNT /mnt", 502),
    ("CWD", 501), ("RETR", 501), ("PWD extra", 501), ("CDUP x", 501), ("PASV x", 501),
    ("TYPE", 501), ("TYPE Q", 501), ("TYPE E", 504), ("TYPE L 7", 504), ("TYPE A T", 504),
    ("TYPE I", 200), ("TYPE L 8", 200), ("TYPE A", 200), ("TYPE A N", 200),
    ("MODE S", 200), ("MODE B", 504), ("MODE Z", 501),
    ("STRU F", 200), ("STRU R", 504), ("STRU X", 501),
    ("REST abc", 501), ("REST -5", 501), ("REST 5", 350),
    ("OPTS UTF8 ON", 200), ("OPTS UTF8 OFF", 504), ("OPTS FOO", 501),
    ("EPSV 2", 522), ("EPSV 9", 522), ("RNTO x", 503), ("PASS again", 503),
    ("SIZE sub", 550), ("SIZE missing", 550), ("MDTM missing", 550), ("CWD ten.bin", 550),
    ("RETR missing", 425), ("RMD missing", 550), ("DELE sub", 550), ("MKD sub", 550),
    ("ALLO 100", 202), ("NOOP", 200), ("SYST", 215), ("HELP XYZZY", 501), ("HELP RETR", 214),
    ("ABOR", 225),
])
async def test_reply_codes(alice, command, code):
    if code is None:     # an empty line is ignored, not answered
        await alice.send(command)
        assert (await alice.cmd("NOOP"))[0] == 200
        return
    got, text = await alice.cmd(command)
    assert got == code, text
    assert "Traceback" not in text and "Error" not in text


@pytest.mark.asyncio
async def test_commands_before_login_get_530(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    for command in ["PWD", "CWD sub", "LIST", "RETR ten.bin", "STOR x", "PASV", "SIZE ten.bin",
                    "MKD x", "STAT /", "ABOR"]:
        assert (await control.cmd(command))[0] == 530, command
    for command, code in [("SYST", 215), ("FEAT", 211), ("NOOP", 200), ("HELP", 214),
                          ("PASS early", 503), ("AUTH TLS", 502), ("STAT", 211)]:
        assert (await control.cmd(command))[0] == code, command
    assert (await control.cmd("QUIT"))[0] == 221
    await control.close()


@pytest.mark.asyncio
async def test_handler_exception_is_451_and_the_session_survives(ftp, caplog, monkeypatch):
    async def broken(session, arg):
        raise RuntimeError("secret internal detail")

    monkeypatch.setitem(COMMANDS, "SYST", Command(broken, "none", login=False))
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    with caplog.at_level(logging.ERROR, logger="pageloan.ftp"):
        code, text = await control.cmd("SYST")
    assert code == 451 and "secret internal detail" not in text
    assert "FTP command SYST failed" in caplog.text
    await control.login()
    assert (await control.cmd("PWD"))[0] == 257
    # A second session is served too: the process survived.
    other = await AsyncControl.connect(service.port)
    assert other.greeting[0] == 220
    await other.close()
    await control.close()


@pytest.mark.asyncio
async def test_overlong_command_line_is_refused(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    code, _text = await control.cmd("NOOP " + "x" * 10_000)
    assert code == 500
    with pytest.raises(EOFError):
        await control.read_reply()
    await control.close()


@pytest.mark.asyncio
async def test_telnet_wrapped_abor_is_understood(alice):
    # IAC IP IAC DM ABOR: what clients send as urgent data to interrupt a transfer.
    assert (await alice.cmd(b"\xff\xf4\xff\xf2ABOR\r\n"))[0] == 225


@pytest.mark.asyncio
async def test_lowercase_verbs_and_bare_lf_are_accepted(alice):
    assert (await alice.cmd(b"noop\n"))[0] == 200
    assert (await alice.cmd(b"pwd\r\n"))[1] == '257 "/" is the current directory.'


# -- what is offered -------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_feat_lists_the_extensions(alice):
    code, text = await alice.cmd("FEAT")
    assert code == 211
    features = {line.strip() for line in text.splitlines()[1:-1]}
    assert {"EPRT", "EPSV", "MDTM", "REST STREAM", "SIZE", "UTF8"} <= features
    assert "MLST type*;size*;modify*;perm*;unique*;" in features
    assert text.splitlines()[-1].startswith("211 ")


@pytest.mark.asyncio
async def test_opts_mlst_selects_facts(alice):
    code, text = await alice.cmd("OPTS MLST size;type;bogus;")
    assert (code, text) == (200, "200 MLST OPTS type;size;")
    code, text = await alice.cmd("MLST ten.bin")
    assert code == 250
    assert text.splitlines()[1] == " type=file;size=10; /ten.bin"


@pytest.mark.asyncio
async def test_type_a_says_files_are_not_converted(alice):
    code, text = await alice.cmd("TYPE A")
    assert code == 200 and "as-is" in text


@pytest.mark.asyncio
async def test_help_lists_every_command(alice):
    code, text = await alice.cmd("HELP")
    assert code == 214
    for verb in ("RETR", "STOR", "EPSV", "MLSD", "FEAT"):
        assert re.search(rf"\b{verb}\b", text)


# -- listings --------------------------------------------------------------------------------

LS_LINE = re.compile(r"^([d-][rwx-]{9}) +(\d+) +ftp +ftp +(\d+) "
                     r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d (\d\d:\d\d| \d{4}) (.+)$")


@pytest.mark.asyncio
async def test_list_is_ls_style(alice):
    listing = await _fetch_listing(alice, "LIST -la")
    assert listing.endswith("\r\n")
    rows = [LS_LINE.match(line) for line in listing.split("\r\n") if line]
    assert all(rows), listing
    by_name = {m.group(6): m for m in rows}
    assert set(by_name) == {"sub", "ten.bin"}      # dotfiles and the partial upload are hidden
    assert by_name["sub"].group(1).startswith("d")
    assert by_name["ten.bin"].group(3) == "10"


@pytest.mark.asyncio
async def test_list_of_a_file_and_a_glob(alice):
    assert re.search(r" ten\.bin\r\n$", await _fetch_listing(alice, "LIST ten.bin"))
    assert await _fetch_listing(alice, "NLST *.bin") == "ten.bin\r\n"
    assert await _fetch_listing(alice, "NLST sub") == "a.txt\r\n"


@pytest.mark.asyncio
async def test_mlsd_and_mlst_facts(alice, tree):
    listing = await _fetch_listing(alice, "MLSD")
    facts = {}
    for line in filter(None, listing.split("\r\n")):
        fact_text, name = line.split(" ", 1)
        facts[name] = dict(f.split("=", 1) for f in fact_text.rstrip(";").split(";"))
    assert facts["sub"]["type"] == "dir" and facts["sub"]["perm"] == "elcdfmp"
    ten = facts["ten.bin"]
    assert ten["type"] == "file" and ten["size"] == "10" and ten["perm"] == "radfw"
    assert ten["modify"] == time.strftime("%Y%m%d%H%M%S", time.gmtime((tree / "ten.bin").stat().st_mtime))
    assert re.fullmatch(r"[0-9a-f]+g[0-9a-f]+", ten["unique"])
    code, text = await alice.cmd("MLST sub")
    assert code == 250 and text.splitlines()[1].startswith(" type=dir;")
    assert (await alice.cmd("PASV"))[0] == 227
    assert (await alice.cmd("MLSD ten.bin"))[0] == 501


@pytest.mark.asyncio
async def test_stat_with_a_path_lists_on_the_control_connection(alice):
    code, text = await alice.cmd("STAT sub")
    assert code == 213 and re.search(r"^ -rw.* a\.txt$", text, re.M)


@pytest.mark.asyncio
async def test_size_and_mdtm(alice, tree):
    assert (await alice.cmd("SIZE ten.bin"))[1] == "213 10"
    mtime = time.strftime("%Y%m%d%H%M%S", time.gmtime((tree / "ten.bin").stat().st_mtime))
    assert (await alice.cmd("MDTM /ten.bin"))[1] == f"213 {mtime}"


# -- the namespace ---------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_mkd_rnfr_rnto_dele_rmd(alice, tree):
    assert (await alice.cmd('MKD new "dir"'))[1] == '257 "/new ""dir""" created.'
    assert (tree / 'new "dir"').is_dir()
    assert (await alice.cmd("RNFR ten.bin"))[0] == 350
    assert (await alice.cmd('RNTO new "dir"/moved.bin'))[0] == 250
    assert (tree / 'new "dir"' / "moved.bin").read_bytes() == b"0123456789"
    assert (await alice.cmd('RMD new "dir"'))[0] == 550                # not empty
    assert (await alice.cmd('DELE new "dir"/moved.bin'))[0] == 250
    assert (await alice.cmd('RMD new "dir"'))[0] == 250
    assert not (tree / 'new "dir"').exists()
    assert (await alice.cmd("RNFR sub"))[0] == 350
    assert (await alice.cmd("NOOP"))[0] == 200
    assert (await alice.cmd("RNTO elsewhere"))[0] == 503                # RNTO must follow RNFR
    assert (await alice.cmd("MKD .x.pageloan-1.part"))[0] == 550        # temporary names are ours


@pytest.mark.asyncio
async def test_uploads_in_progress_are_invisible(alice, tree):
    name = ".ten.bin.pageloan-0badc0de.part"
    for command in (f"SIZE {name}", f"RNFR {name}", f"DELE {name}", f"MLST sub/../{name}", f"STAT {name}"):
        assert (await alice.cmd(command))[0] == 550, command
    await alice.pasv_port()
    assert (await alice.cmd(f"RETR {name}"))[0] == 550
    assert (await alice.cmd(f"STOR {name}"))[0] == 550
    assert (tree / name).read_text() == "an upload in progress"


@pytest.mark.asyncio
async def test_rest_beyond_the_end_is_554_and_appe_with_rest_is_503(alice):
    await alice.pasv_port()
    assert (await alice.cmd("REST 11"))[0] == 350
    assert (await alice.cmd("RETR ten.bin"))[0] == 554
    assert (await alice.cmd("REST 11"))[0] == 350
    assert (await alice.cmd("STOR ten.bin"))[0] == 554
    assert (await alice.cmd("REST 3"))[0] == 350
    assert (await alice.cmd("APPE ten.bin"))[0] == 503


@pytest.mark.asyncio
async def test_stor_into_a_directory_or_nowhere(alice):
    await alice.pasv_port()
    assert (await alice.cmd("STOR sub"))[0] == 550
    assert (await alice.cmd("STOR nowhere/x.bin"))[0] == 553
    assert (await alice.cmd("STOR /"))[0] == 553


@pytest.mark.asyncio
async def test_epsv_all_locks_out_the_other_setups(alice):
    assert (await alice.cmd("EPSV ALL"))[0] == 200
    for command in ("PASV", "PORT 127,0,0,1,200,1", "EPRT |1|127.0.0.1|51201|"):
        assert (await alice.cmd(command))[0] == 501, command
    assert (await alice.cmd("EPSV"))[0] == 229


# -- configuration and the service -----------------------------------------------------------

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    add_ftp_arguments(parser)
    return parser.parse_args(argv)


def test_ftp_is_off_without_a_port(tmp_path):
    assert ftp_config_from_args(_parse([]), tmp_path) is None


def test_config_from_args(tmp_path):
    accounts = users_file(tmp_path / "users", {"alice": "rw", "bob": "r"})
    args = _parse(["--host", "127.0.0.1", "--ftp-port", "0", "--ftp-users", str(accounts),
                   "--ftp-anonymous", "--ftp-passive-ports", "50000-50100",
                   "--ftp-idle-timeout", "30", "--ftp-data-timeout", "7.5", "--ftp-max-per-ip", "3"])
    config = ftp_config_from_args(args, tmp_path)
    assert config.host == "127.0.0.1" and config.port == 0
    assert config.accounts["alice"].writable and not config.accounts["bob"].writable
    assert config.anonymous and config.passive_ports == (50000, 50100)
    assert (config.idle_timeout, config.data_timeout, config.max_per_ip) == (30, 7.5, 3)
    assert config.login_delay == 1.0
    assert ftp_config_from_args(_parse(["--ftp-port", "21", "--ftp-host", "::1"]), tmp_path).host == "::1"


@pytest.mark.parametrize("argv", [["--ftp-passive-ports", "100-200"], ["--ftp-passive-ports", "6000"],
                                  ["--ftp-passive-ports", "7000-6000"], ["--ftp-idle-timeout", "0"],
                                  ["--ftp-max-per-ip", "0"]])
def test_bad_options_are_refused(argv):
    with pytest.raises(SystemExit):
        _parse(["--ftp-port", "0", *argv])


@pytest.mark.parametrize("line", ["alice:scrypt$1$2$3$x$y:rwx", "alice:plaintext:rw", "alice:rw",
                                  ":scrypt$1$2$3$x$y:r"])
def test_bad_accounts_file_names_the_line(tmp_path, line):
    path = tmp_path / "users"
    path.write_text(f"# comment\n\n{line}\n")
    with pytest.raises(ValueError, match=r"users:3"):
        ftp_config_from_args(_parse(["--ftp-port", "0", "--ftp-users", str(path)]), tmp_path)


@pytest.mark.asyncio
async def test_start_and_close(tree):
    service = await start_ftp(FtpConfig(root=tree, port=0))
    assert service.port > 0
    control = await AsyncControl.connect(service.port)
    assert control.greeting[0] == 220
    await service.close()
    assert await asyncio.wait_for(control.reader.read(), 5) == b""   # the session was ended
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", service.port)     # and nobody listens
    await control.close()


@pytest.mark.asyncio
async def test_two_services_can_share_a_port(tree):
    first = await start_ftp(FtpConfig(root=tree, port=0))
    second = await start_ftp(FtpConfig(root=tree, port=first.port))    # SO_REUSEPORT, as workers do
    assert second.port == first.port
    control = await AsyncControl.connect(first.port)
    assert control.greeting[0] == 220
    await control.close()
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_login_with_a_named_account(ftp):
    service = await ftp.start()
    control = await AsyncControl.connect(service.port)
    await control.cmd("USER bob")
    code, text = await control.cmd(f"PASS {PASSWORD}")
    assert code == 230 and "read-only" in text
    await control.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.asyncio
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_uses_epsv_and_eprt(tree):
    service = await start_ftp(FtpConfig(root=tree, host="::1", port=0, anonymous=True))
    try:
        control = await AsyncControl.connect(service.port, host="::1")
        await control.login("anonymous", "guest@")
        assert (await control.cmd("PASV"))[0] == 425          # 227 cannot carry an IPv6 address
        assert (await control.cmd("EPSV 1"))[1] == "522 Network protocol not supported, use (2)."
        code, text = await control.cmd("EPSV 2")
        port = int(re.search(r"\|\|\|(\d+)\|", text).group(1))
        await control.send("RETR ten.bin")
        reader, writer = await asyncio.open_connection("::1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b"0123456789"
        writer.close()
        assert (await control.read_reply())[0] == 150
        assert (await control.read_reply())[0] == 226
        assert (await control.cmd("EPRT |1|127.0.0.1|5001|"))[0] == 522
        assert (await control.cmd("EPRT |2|::2|5001|"))[0] == 501  # another address: bounce
        await control.close()
    finally:
        await service.close()


@pytest.mark.asyncio
async def test_stat_answers_during_a_transfer(alice, tree):
    with open(tree / "huge.bin", "wb") as f:
        f.truncate(64 << 20)
    port = await alice.pasv_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert (await alice.cmd("RETR huge.bin"))[0] == 150
    code, text = await alice.cmd("STAT")                      # answered while bytes are moving
    assert code == 211 and "Transfer in progress: RETR /huge.bin" in text
    assert (await alice.cmd("ABOR"))[0] == 426
    assert (await alice.read_reply())[0] == 226
    writer.close()
    assert (await alice.cmd("STAT"))[1].count("No data connection") == 1
