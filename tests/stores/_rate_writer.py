"""A rate writer process for test_wb_rates_processes.py:
``python _rate_writer.py URL SEED EVENTS NOW_NS`` writes EVENTS events into rate
"r" (and keyed rate "k") at driven wall-clock times in the 30 buckets before
NOW_NS, flushing now and then, and prints its ledger {slot: n} as JSON."""

from __future__ import annotations

import json
import random
import sys


def main() -> None:
    url, seed, events, now_ns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import tallies

    rnd = random.Random(seed)
    res = 1_000_000_000
    plain: dict[int, int] = {}
    keyed: dict[str, dict[int, int]] = {}
    with tallies.open(url) as s:
        r = s.rate("r", 30, 1)
        kr = s.keyed_rate("k", 30, 1)
        t = [0]
        r.clock = kr.clock = lambda: t[0]
        times = sorted(now_ns + res - 1 - rnd.randrange(30 * res) for _ in range(events))
        for i, at in enumerate(times):  # a clock moves forward
            slot = at // res
            t[0] = at
            n = rnd.randrange(1, 5)
            key = rnd.choice("abc")
            r.increment(n)
            kr.increment(key, n)
            plain[slot] = plain.get(slot, 0) + n
            keyed.setdefault(key, {})[slot] = keyed.get(key, {}).get(slot, 0) + n
            if i % 97 == 0:
                s.flush()
    print(json.dumps({"plain": plain, "keyed": keyed}))


if __name__ == "__main__":
    main()
