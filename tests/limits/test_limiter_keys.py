"""Limiter keys come and go (per user, per IP): each store forgets a key once
its window has expired, so the limiter does not grow without bound; and a
shm:// entry whose lock a dead process holds is taken over and repaired."""

from __future__ import annotations

import mmap
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _redis_support import RedisServer, unique_prefix
from _shm_support import new_url as new_shm_url

import tallies
from tallies.stores import CapacityError


def test_memory_forgets_keys_whose_window_expired() -> None:
    with tallies.open("memory://") as s:
        lim = s.limiter("ip", 1, 0.05, resolution=0.01)
        for i in range(500):
            assert lim.hit(f"10.0.0.{i}")
        assert len(lim) == 500
        time.sleep(0.12)
        assert lim.hit("10.0.1.1")
        assert len(lim) == 1


def test_shm_reuses_the_entries_of_expired_keys() -> None:
    url = new_shm_url("?limiter_keys=64")
    try:
        with tallies.open(url) as s:
            lim = s.limiter("ip", 1, 0.05, resolution=0.01)
            admitted = 0
            for i in range(64):
                try:
                    admitted += lim.hit(f"a{i}")
                except CapacityError:
                    break  # 64 entries, probed 64 at a time from each key's hash
            assert admitted >= 32
            with pytest.raises(CapacityError, match="limiter_keys"):
                for i in range(200):
                    lim.hit(f"b{i}")
            time.sleep(0.12)  # every window expired: their entries are free again
            for i in range(32):
                assert lim.hit(f"c{i}")
    finally:
        tallies.destroy(url)


def test_redis_keys_expire_with_their_window(redis_server: RedisServer) -> None:
    prefix = unique_prefix("lk")
    with tallies.open(redis_server.url(prefix)) as s:
        lim = s.limiter("ip", 5, 2)
        assert lim.hit("10.0.0.1")
    r = redis_server.client()
    keys = [k.decode() for k in r.keys(f"{prefix}~l:*")]
    assert len(keys) == 1
    assert 0 < r.pttl(keys[0]) <= 2000 + 2 / 60 * 1000 + 1000 + 50
    time.sleep(3.2)
    assert r.keys(f"{prefix}~l:*") == []


def test_sqlite_prunes_expired_slots(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lim.db"
    with tallies.open(url) as s:
        lim = s.limiter("ip", 5, 0.05, resolution=0.01)
        for i in range(100):
            assert lim.hit(f"10.0.0.{i}")
    time.sleep(0.12)
    with tallies.open(url + "?timeout=4") as s:  # another writer: prunes on its first call
        assert s.limiter("ip", 5, 0.05, resolution=0.01).hit("10.0.1.1")
    rows = sqlite3.connect(f"{tmp_path}/lim.db").execute("SELECT key FROM limiter_slots").fetchall()
    assert rows == [("10.0.1.1",)]


def _owner_word(pid: int) -> int:
    """The lock word of process ``pid`` (_c/_limtable.h: pid, start time)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start = int(stat.rpartition(")")[2].split()[19])
    return (1 << 63) | ((start & 0xFFFFFFFF) << 32) | pid


def test_a_lock_held_by_a_dead_process_is_taken_over_and_the_entry_repaired() -> None:
    from tallies._impl import native

    url = new_shm_url("?limiter_keys=64")
    try:
        with tallies.open(url) as s:
            lim = s.limiter("api", 5, 60)
            assert lim.hit("k", 2)
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            word = _owner_word(p.pid)
            p.kill()
            p.wait()
            header, entry = int(native.LIMTABLE_HEADER), int(native.LIMTABLE_ENTRY)
            with open(s.path + ".limits", "r+b") as f:
                mm = mmap.mmap(f.fileno(), 0)
                try:
                    for i in range(64):  # every entry: locked by the dead process,
                        off = header + i * entry  # and its total left wrong
                        struct.pack_into("<Q", mm, off, word)
                        struct.pack_into("<q", mm, off + 56, 0)
                finally:
                    mm.close()
            t0 = time.monotonic()
            assert lim.remaining("k") == 3  # the total recomputed from the counts
            assert lim.hit("k", 3) and not lim.hit("k")
            print(f"\ntaken over in {time.monotonic() - t0:.3f} s")
    finally:
        tallies.destroy(url)
