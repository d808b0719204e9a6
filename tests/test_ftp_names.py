"""FTP serves the names HTTP serves: dotfiles hidden and refused, links judged by their target.

Regression for issue 12: `RETR .env`, `.htpasswd`, `.git/config` were served over FTP
from a root where HTTP answers 404, and NLST/LIST/MLSD listed them.  Both protocols
now ask the same `server.core.safepath.NamePolicy`; `--show-dotfiles` opens both.
"""

from __future__ import annotations

import asyncio
import ftplib
import os
import shutil
import urllib.error
import urllib.request

import pytest
from harness import free_port, wait_for_port
from test_ftp_support import CLIENT_TIMEOUT, AsyncControl, InProcessFtp, run_client

from server.core.safepath import HiddenName, NamePolicy, UnsafePath

SECRET = b"DB_PASSWORD=hunter2\n"

# Every spelling of a dotfile path a client might try; all must be refused.
HIDDEN_PATHS = [".env", "/.env", ".htpasswd", ".git/config", "/.git/config", "sub/.secret",
                "sub/../.env", "./.env", "env-link", "sub/git-link/config", ".git", ".pageloan-x"]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".env").write_bytes(SECRET)
    (root / ".htpasswd").write_bytes(SECRET)
    (root / ".git" / "config").write_bytes(SECRET)
    (root / ".pageloan-x").write_bytes(SECRET)
    (root / "sub" / ".secret").write_bytes(SECRET)
    (root / "sub" / "visible.txt").write_text("visible\n")
    (root / "ten.bin").write_bytes(b"0123456789")
    os.symlink(".env", root / "env-link")                     # a plain name onto a dotfile
    os.symlink("../.git", root / "sub" / "git-link")           # a plain dir onto a dot dir
    os.symlink("visible.txt", root / "sub" / "fine-link")      # a link the policy allows
    return root


@pytest.fixture
async def ftp(tree):
    servers = InProcessFtp(tree)
    yield servers
    await servers.close_all()


async def _login(service, user: str = "alice") -> AsyncControl:
    control = await AsyncControl.connect(service.port)
    await control.login(user)
    return control


async def _listing(control: AsyncControl, command: str) -> tuple[int, str]:
    port = await control.pasv_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    code, text = await control.cmd(command)
    if code != 150:
        writer.close()
        return code, text
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert (await control.read_reply())[0] == 226
    return 150, data.decode()


# -- the shared policy ----------------------------------------------------------------------

def test_policy_judges_names_and_targets(tree):
    root = tree.resolve()
    policy = NamePolicy()
    assert policy.locate(root, ["sub", "visible.txt"]) == root / "sub" / "visible.txt"
    assert policy.locate(root, ["sub", "fine-link"]) == root / "sub" / "fine-link"
    assert policy.locate(root, ["new-file"]) == root / "new-file"         # need not exist
    for parts in (["sub", ".secret"], [".git", "config"], ["env-link"], ["sub", "git-link", "config"]):
        with pytest.raises(HiddenName):
            policy.locate(root, parts)
    shown = NamePolicy(show_dotfiles=True)
    assert shown.locate(root, ["env-link"]) == root / "env-link"
    assert shown.locate(root, [".git", "config"]) == root / ".git" / "config"


def test_policy_follows_links_out_of_the_root_for_reading_only(tree, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("data")
    os.symlink(outside, tree / "out-link")
    root = tree.resolve()
    with pytest.raises(UnsafePath):
        NamePolicy().locate(root, ["out-link", "data.txt"])
    follow = NamePolicy(follow_symlinks=True)
    assert follow.locate(root, ["out-link", "data.txt"]) == root / "out-link" / "data.txt"
    with pytest.raises(UnsafePath):
        follow.locate(root, ["out-link", "new.txt"], write=True)


# -- refused, whatever the command ------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("verb", ["RETR", "SIZE", "MDTM", "CWD", "MLST", "LIST", "NLST", "MLSD", "STAT"])
async def test_read_commands_refuse_dotfiles(ftp, verb):
    service = await ftp.start()
    control = await _login(service)
    for path in HIDDEN_PATHS:
        if verb in ("RETR", "LIST", "NLST", "MLSD"):
            await control.pasv_port()
        code, text = await control.cmd(f"{verb} {path}")
        assert code == 550, (path, text)
        assert await control.cmd("PWD") == (257, '257 "/" is the current directory.')
    await control.close()


@pytest.mark.asyncio
async def test_write_commands_refuse_dotfiles_and_touch_nothing(ftp, tree):
    service = await ftp.start()
    control = await _login(service)
    for path in HIDDEN_PATHS:
        await control.pasv_port()
        for command in (f"STOR {path}", f"APPE {path}", f"DELE {path}", f"RMD {path}",
                        f"MKD {path}", f"RNFR {path}"):
            code, text = await control.cmd(command)
            assert code == 550, (command, text)
    for target in (".htaccess", "sub/.evil", ".git/hooks", "env-link"):
        assert (await control.cmd("RNFR ten.bin"))[0] == 350
        assert (await control.cmd(f"RNTO {target}"))[0] == 550, target
    assert (await control.cmd("MKD .ssh"))[0] == 550
    await control.close()
    assert (tree / ".env").read_bytes() == SECRET and (tree / ".git" / "config").read_bytes() == SECRET
    assert (tree / "ten.bin").read_bytes() == b"0123456789"
    assert not (tree / ".htaccess").exists() and not (tree / ".ssh").exists()
    assert sorted(p.name for p in tree.iterdir()) == [".env", ".git", ".htpasswd", ".pageloan-x",
                                                      "env-link", "sub", "ten.bin"]


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["NLST", "LIST -a", "LIST -la", "MLSD", "NLST *", "NLST sub", "MLSD sub"])
async def test_listings_hide_dotfiles_and_links_onto_them(ftp, command):
    service = await ftp.start()
    control = await _login(service)
    code, listing = await _listing(control, command)
    assert code == 150, listing
    names = {line.split(" ")[-1].rsplit("/", 1)[-1] for line in listing.splitlines()}
    if "sub" in command:
        assert names == {"visible.txt", "fine-link"}
    else:
        assert names == {"sub", "ten.bin"}
    code, text = await control.cmd("STAT .")
    assert code == 213 and ".env" not in text and "env-link" not in text
    await control.close()


# -- --show-dotfiles opens them, as it does for HTTP ------------------------------------------

@pytest.mark.asyncio
async def test_show_dotfiles_serves_and_lists_them(ftp, tree):
    service = await ftp.start(show_dotfiles=True)
    control = await _login(service)
    code, listing = await _listing(control, "NLST")
    assert set(listing.split()) == {".env", ".git", ".htpasswd", ".pageloan-x", "env-link", "sub", "ten.bin"}
    assert await control.cmd("SIZE .git/config") == (213, f"213 {len(SECRET)}")
    port = await control.pasv_port()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await control.cmd("RETR env-link"))[0] == 150
    assert await asyncio.wait_for(reader.read(), 10) == SECRET
    writer.close()
    assert (await control.read_reply())[0] == 226
    assert (await control.cmd("MKD .cache"))[0] == 257
    assert (tree / ".cache").is_dir()
    await control.close()


# -- stock clients, and the two protocols side by side ------------------------------------------

def test_ftplib_and_curl_get_550_for_dotfiles(tree, tmp_path):
    from test_ftp_support import FtpProcess
    server = FtpProcess(tree, tmp_path / "ftp.log", "--ftp-anonymous")
    try:
        ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        ftp.connect("127.0.0.1", server.port)
        ftp.login()
        for path in (".env", ".htpasswd", ".git/config", "env-link"):
            got = bytearray()
            with pytest.raises(ftplib.error_perm, match="^550"):
                ftp.retrbinary(f"RETR {path}", got.extend)
            assert not got
        assert sorted(ftp.nlst()) == ["sub", "ten.bin"]
        assert [name for name, _facts in ftp.mlsd()] == ["sub", "ten.bin"]
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd(".git")
        ftp.quit()
        if shutil.which("curl"):
            for path in (".env", ".git/config", "env-link"):
                out = tmp_path / "out"
                result = run_client(["curl", "-sS", "-o", str(out), f"ftp://127.0.0.1:{server.port}/{path}"])
                assert result.returncode != 0, path
                assert not out.exists() or SECRET not in out.read_bytes()
            listing = run_client(["curl", "-sS", "--list-only", f"ftp://127.0.0.1:{server.port}/"])
            assert listing.returncode == 0 and listing.stdout.split() == ["sub", "ten.bin"]
    finally:
        server.stop()


def _http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=CLIENT_TIMEOUT) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("show", [False, True], ids=["default", "show-dotfiles"])
def test_pageloan_serve_gives_http_and_ftp_the_same_answer(server_process, tree, show):
    ftp_port = free_port()
    args = [str(tree), "--ftp-port", str(ftp_port), "--ftp-anonymous"] + (["--show-dotfiles"] if show else [])
    http = server_process(args)
    wait_for_port(ftp_port, proc=http.proc)
    ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
    ftp.connect("127.0.0.1", ftp_port)
    ftp.login()
    # env-link (a plain name onto .env) is left out of the comparison: the static
    # site judges only the name asked for (reported to the lead; NamePolicy.check_open
    # is the fix there).  FTP refusing it is pinned by the tests above.
    for path in (".env", ".git/config", ".htpasswd", "sub/.secret", "sub/visible.txt"):
        status = _http_status(http.port, path)
        got = bytearray()
        try:
            ftp.retrbinary(f"RETR {path}", got.extend)
            ftp_ok = True
        except ftplib.error_perm as exc:
            assert str(exc).startswith("550")
            ftp_ok = False
        assert ftp_ok == (status == 200), (path, status)
        assert ftp_ok == (show or path == "sub/visible.txt"), path
    ftp.quit()


def test_dotfile_refusal_is_logged_without_the_secret(tree, tmp_path):
    from test_ftp_support import FtpProcess
    server = FtpProcess(tree, tmp_path / "ftp.log", "--ftp-anonymous")
    try:
        ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        ftp.connect("127.0.0.1", server.port)
        ftp.login()
        with pytest.raises(ftplib.error_perm):
            ftp.size(".env")
        ftp.quit()
        assert "refused hidden name '.env'" in server.log()
        assert SECRET.decode().strip() not in server.log()
    finally:
        server.stop()
