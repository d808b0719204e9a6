"""The open-file cache: one stat per hit, changes and renames seen at once, bounded."""

from __future__ import annotations

import os

import pytest

from server.core.filecache import OpenFile, OpenFileCache


@pytest.fixture
def cache():
    return OpenFileCache(max_entries=16, map_max=1024)


def test_hit_reuses_descriptor(tmp_path, cache):
    path = str(tmp_path / "f")
    (tmp_path / "f").write_bytes(b"abc")
    first = cache.open(path)
    assert cache.open(path) is first
    assert (cache.hits, cache.misses) == (1, 1)
    assert first.size == 3 and first.used


def test_change_in_place_reopens(tmp_path, cache):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    first = cache.open(str(f))
    f.write_bytes(b"abcdef")
    second = cache.open(str(f))
    assert second is not first and second.size == 6
    assert os.pread(first.fd, 16, 0) == b"abcdef"    # same inode: the old object sees the file


def test_atomic_rename_is_seen_and_old_file_stays_readable(tmp_path, cache):
    f = tmp_path / "f"
    f.write_bytes(b"old contents")
    old = cache.open(str(f))
    (tmp_path / "tmp").write_bytes(b"new")
    os.rename(tmp_path / "tmp", f)
    new = cache.open(str(f))
    assert new is not old and new.ino != old.ino
    # A response still holding the old OpenFile keeps reading the old bytes.
    assert os.pread(old.fd, 64, 0) == b"old contents"
    assert os.pread(new.fd, 64, 0) == b"new"


def test_deleted_file_raises_and_is_dropped(tmp_path, cache):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    cache.open(str(f))
    f.unlink()
    with pytest.raises(FileNotFoundError):
        cache.open(str(f))
    assert len(cache) == 0


def test_descriptor_closed_when_last_reference_goes(tmp_path, cache):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    opened = cache.open(str(f))
    fd = opened.fd
    cache.clear()
    del opened
    with pytest.raises(OSError):
        os.fstat(fd)


def test_bounded_with_second_chance(tmp_path):
    cache = OpenFileCache(max_entries=8, map_max=0)
    paths = []
    for i in range(8):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"x")
        paths.append(str(p))
        cache.open(str(p))
    hot = cache.open(paths[0])                 # used since it was opened
    extra = tmp_path / "extra"
    extra.write_bytes(b"y")
    cache.open(str(extra))
    assert len(cache) <= 8
    assert cache.open(paths[0]) is hot         # the hot file survived the eviction
    for i in range(100):
        p = tmp_path / f"g{i}"
        p.write_bytes(b"z")
        cache.open(str(p))
    assert len(cache) <= 8


def test_small_files_mapped_large_and_empty_not(tmp_path, cache):
    (tmp_path / "small").write_bytes(b"s" * 100)
    (tmp_path / "large").write_bytes(b"l" * 5000)
    (tmp_path / "empty").write_bytes(b"")
    small = cache.open(str(tmp_path / "small"))
    window = small.window(10, 20)
    assert window is not None and len(window) == 20
    assert small.window(90, 20) is None                   # never past the end
    assert cache.open(str(tmp_path / "large")).window(0, 10) is None
    assert cache.open(str(tmp_path / "empty")).window(0, 0) is None


def test_directories_and_fifos_refused_without_blocking(tmp_path, cache):
    with pytest.raises(IsADirectoryError):
        cache.open(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # O_NONBLOCK: opening a FIFO with no writer returns at once (then it is refused).
    with pytest.raises(PermissionError):
        OpenFile(str(fifo), 0)


def test_replaced_file_descriptor_closes_without_the_garbage_collector(tmp_path):
    """Answers cached on an OpenFile must not form a cycle that keeps the old fd open."""
    import gc

    from server.http.request import Request
    from server.static.site import StaticSite

    path = tmp_path / "a.txt"
    path.write_bytes(b"x" * 5000)
    site = StaticSite(tmp_path)

    def get(headers=()):
        return site.respond(Request("GET", b"/a.txt", "1.1", list(headers), True, None, None))

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        first = get()
        ranged = get([(b"Range", b"bytes=0-9,20-29")])     # memoised on the OpenFile
        old_fd = first.payload[0].fd
        del first, ranged
        path.rename(tmp_path / "a.txt.old")
        path.write_bytes(b"y" * 10)
        assert get().payload[0].count == 10               # the new file is served
        assert not os.path.exists(f"/proc/self/fd/{old_fd}") or \
            os.readlink(f"/proc/self/fd/{old_fd}") != str(tmp_path / "a.txt.old")
    finally:
        if was_enabled:
            gc.enable()
