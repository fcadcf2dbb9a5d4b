"""The redis:// nemesis: writers and a Sentinel-managed master + replica on
their own network namespaces, through partitions, packet loss, delayed,
duplicated and cut connections, writer SIGKILLs, Redis SIGKILLs and
failovers (``tests/_nemesis.py`` has the setup and the checker).

``wait=1``: every increment acknowledged by a ``flush()`` that returned is in
Redis exactly once, nothing is counted twice, a SIGKILLed writer lost only
what it had not seen acknowledged, the SIGTERMed writer lost nothing.
``wait=0``: nothing counted twice either, and the report says what the
failover after a replica fell behind lost (the documented risk); the test
checks that it did lose something, or the nemesis would have no teeth.

Needs root, ``ip`` and ``nft``: skipped without them, failed under CI or
``TALLIES_REQUIRE_NEMESIS=1``.  ``TALLIES_NEMESIS_SEED`` replays a schedule
(the seed is in the report); ``scripts/nemesis`` runs a longer one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import _nemesis
import pytest
from _support import REQUIRE_SERVERS, unavailable

pytestmark = pytest.mark.nemesis

REQUIRE = REQUIRE_SERVERS or os.environ.get("TALLIES_REQUIRE_NEMESIS") == "1"


def seed() -> int:
    raw = os.environ.get("TALLIES_NEMESIS_SEED")
    return int(raw) if raw else random.randrange(1 << 20)


@pytest.fixture
def nemesis_ready() -> None:
    why = _nemesis.why_not()
    if why:
        unavailable(why, required=REQUIRE, by="CI / TALLIES_REQUIRE_NEMESIS=1")


def test_wait_1_keeps_every_acknowledged_count_once_through_failovers(
    tmp_path: Path, nemesis_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    tally, report = _nemesis.run(tmp_path, wait=1, seed=seed(), scale=1.0)
    with capsys.disabled():
        print("\n" + _nemesis.format_report(tally, report))
    assert _nemesis.failures(tally, report, scale=1.0) == []
    assert report["events_acknowledged"] > 1000  # the writers did work
    assert report["flushes_failed"] > 0  # and the faults did reach them


def test_wait_0_counts_nothing_twice_and_reports_what_a_failover_lost(
    tmp_path: Path, nemesis_ready: None, capsys: pytest.CaptureFixture[str]
) -> None:
    tally, report = _nemesis.run(tmp_path, wait=0, seed=seed(), scale=0.4)
    with capsys.disabled():
        print("\n" + _nemesis.format_report(tally, report))
    assert _nemesis.failures(tally, report, scale=0.4) == []
    assert report["acknowledged_lost"] > 0, "the lagging failover lost nothing: no teeth"
