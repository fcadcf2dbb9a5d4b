"""Capacities a machine cannot hold, and URL parameters read the same way by
every scheme (docs/contract.md, "Capacity"; issue 24, "Capacity")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _redis_support import RedisServer, unique_prefix
from _shm_support import new_url

import tallies
from tallies.stores import CapacityError
from tallies.stores.shm import segment_path


def test_a_segment_over_half_the_machines_memory_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``shm://x?names=1048576&keys=16777216`` reserved about 13 GB of /dev/shm
    silently.  Here the machine is made to report 256 MiB, and a segment of
    about 0.5 GiB is asked for: refused, nothing created."""
    real = os.sysconf

    def small_machine(name: str | int) -> int:
        if name == "SC_PHYS_PAGES":
            return (256 << 20) // real("SC_PAGE_SIZE")
        return real(name)

    monkeypatch.setattr(os, "sysconf", small_machine)
    url = new_url("?names=1024&keys=1048576&slabs=64")
    with pytest.raises(CapacityError, match=r"more than half of this machine's 0\.2 GiB"):
        tallies.open(url)
    assert not os.path.exists(segment_path(url.partition("?")[0][len("shm://") :]))
    small = new_url("?names=64&keys=256&slabs=4")
    tallies.open(small).close()  # a small one still fits
    tallies.destroy(small.partition("?")[0])


@pytest.mark.parametrize("flush", ["0.000001", "0.0009", "1e-9"])
def test_a_flush_interval_below_the_floor_is_refused(
    tmp_path: Path, redis_server: RedisServer, flush: str
) -> None:
    """``flush=0.000001`` used to be accepted and kept a CPU busy."""
    urls = [
        f"sqlite:///{tmp_path}/x.db?flush={flush}",
        redis_server.url(unique_prefix("fl"), flush=flush),
    ]
    for url in urls:
        with pytest.raises(ValueError, match=r"is below the 0.001 s floor \(flush=0 is write"):
            tallies.open(url)
    assert not (tmp_path / "x.db").exists()
    for ok in ("0", "0.001", "2.5"):
        for url in (
            f"sqlite:///{tmp_path}/y.db?flush={ok}",
            redis_server.url(unique_prefix("fl"), flush=ok),
        ):
            tallies.open(url).close()


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("flush=abc", "flush='abc' is not a number of seconds"),
        ("flush=nan", "flush='nan' is not a finite number of seconds"),
        ("flush=-1", "flush='-1' is outside [0, 86400] seconds"),
        ("timeout=inf", "timeout='inf' is not a finite number of seconds"),
        ("nope=1", "unknown parameter(s) nope"),
    ],
)
def test_every_scheme_words_a_bad_parameter_the_same_way(
    tmp_path: Path, redis_server: RedisServer, param: str, message: str
) -> None:
    for url in (f"sqlite:///{tmp_path}/x.db?{param}", f"redis://127.0.0.1:1/0?{param}"):
        with pytest.raises(ValueError) as info:
            tallies.open(url)
        assert message in str(info.value), str(info.value)
