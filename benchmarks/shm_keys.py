"""``shm://`` at many keys (issue 19): the cost of a key stays flat.

    python -m benchmarks.shm_keys [N ...]      (default 1000 10000 100000 1000000)

For each N, one writer process, a fresh segment, N distinct str keys:

* first increment: ``k.increment(key)`` once per key, the whole loop timed,
  divided by N (each is a new key: the insert path), wall clock and this
  process's CPU time (on a loaded machine wall time also counts the time the
  process waited for a CPU), and against the same
  loop on a fresh ``KeyedCounter`` right after (``vs KC``: on this machine a
  plain dict insert of a new key costs ~1.6 us at 10^6 keys, cache misses);
* existing key: ``k.increment(key)`` over 10,000 of those keys against
  ``KeyedCounter.increment`` (holding the same N keys) over the same keys,
  interleaved for 7 rounds, the ratio per round (median, lowest, highest);
* disk used: the segment file's allocated blocks (``st_blocks``, what ``du``
  shows) and its apparent size.

Timings are ratios within one run where a peer exists; the absolute per-key
cost is printed too, with the date and machine, since the target (<= 2 us) is
absolute.  Not part of ``tallies bench`` (it makes segments of up to ~100 MiB).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
import uuid

import tallies
from tallies import KeyedCounter

SAMPLE = 10_000
ROUNDS = 7


def _loop(inc: object, keys: list[str]) -> float:
    f = inc
    t0 = time.perf_counter()
    for key in keys:
        f(key)  # type: ignore[operator]
    return time.perf_counter() - t0


def measure(n: int) -> dict[str, float]:
    from tallies.stores._shm_segment import DEFAULT_KEYS

    name = f"bench-keys-{uuid.uuid4().hex[:8]}"
    url = f"shm://{name}" + (f"?keys={n + 1}" if n + 1 > DEFAULT_KEYS else "")
    keys = [f"user:{i}" for i in range(n)]
    try:
        with tallies.open(url) as store:
            k = store.keyed("events")
            k.increment("warm-up")  # this process's slab is claimed once, not per key
            cpu = time.process_time()
            first = _loop(k.increment, keys) / n
            first_cpu = (time.process_time() - cpu) / n
            peer = KeyedCounter()
            peer_first = _loop(peer.increment, keys) / n
            del peer
            sample = keys[:: max(1, n // SAMPLE)][:SAMPLE]
            local = KeyedCounter()  # the same N keys, as the segment holds
            for key in keys:
                local.increment(key)
            ratios, shm_ns = [], []
            for r in range(ROUNDS):
                pair = [("shm", k.increment), ("kc", local.increment)]
                times = {}
                for label, inc in pair if r % 2 else reversed(pair):
                    times[label] = min(_loop(inc, sample) for _ in range(3))
                ratios.append(times["shm"] / times["kc"])
                shm_ns.append(times["shm"] / len(sample) * 1e9)
            assert k.value(keys[0]) == 1 + ROUNDS * 3 * (keys[0] in sample)
            st = os.stat(store.path)  # type: ignore[attr-defined]
            return {
                "n": n,
                "first_us": first * 1e6,
                "first_cpu_us": first_cpu * 1e6,
                "first_ratio": first / peer_first,
                "existing_ns": statistics.median(shm_ns),
                "ratio": statistics.median(ratios),
                "ratio_lo": min(ratios),
                "ratio_hi": max(ratios),
                "du_mib": st.st_blocks * 512 / 2**20,
                "size_mib": st.st_size / 2**20,
            }
    finally:
        tallies.destroy(url)


def main(argv: list[str]) -> int:
    ns = [int(a) for a in argv] or [1_000, 10_000, 100_000, 1_000_000]
    print(
        f"# shm:// keys, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"{'N':>9} {'first inc':>11} {'(cpu)':>9} {'vs KC':>7} {'existing':>10} "
        f"{'vs KeyedCounter':>22} {'disk used':>11} {'file size':>11}"
    )
    for n in ns:
        m = measure(n)
        print(
            f"{n:>9,} {m['first_us']:>8.2f} us {m['first_cpu_us']:>6.2f} us "
            f"{m['first_ratio']:>6.1f}x "
            f"{m['existing_ns']:>7.1f} ns "
            f"{m['ratio']:>7.2f}x ({m['ratio_lo']:.2f}-{m['ratio_hi']:.2f}) "
            f"{m['du_mib']:>7.1f} MiB {m['size_mib']:>7.1f} MiB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
