"""Limiter ledgers: writer processes that log every ``hit()``'s answer and
time (and every lease call), and the checks of the promise
(``tallies.stores._limiter``) against those logs.

A writer is ``python _ledger.py URL LOG THREADS SECONDS LIMIT PER RES``: it
hits limiter "api" key "k" from THREADS threads for SECONDS, appending one
JSON line per hit and per lease call to LOG with one ``write()`` each (so a
SIGKILLed writer's log is complete up to its last hit)."""

from __future__ import annotations

import bisect
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Ledger:
    hits: list[tuple[float, float, bool | None]] = field(default_factory=list)  # None: error
    calls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, paths: list[Path]) -> Ledger:
        led = cls()
        for p in paths:
            sends: dict[float, dict[str, Any]] = {}
            replied: set[float] = set()
            for line in p.read_text().splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line cut by SIGKILL
                if e["e"] == "hit":
                    led.hits.append((e["t0"], e["t1"], e["ok"]))
                elif e["e"] == "send":
                    sends[e["sent"]] = e
                else:
                    led.calls.append(e)
                    replied.add(e["sent"])
            for sent, e in sends.items():  # sent, never answered (a SIGKILL): unknown
                if sent not in replied:
                    led.calls.append(
                        {**e, "e": "call", "replied": float("inf"), "error": "no reply logged"}
                    )
        led.hits.sort()
        return led

    @property
    def admitted(self) -> int:
        return sum(1 for h in self.hits if h[2])

    @property
    def refused(self) -> int:
        return sum(1 for h in self.hits if h[2] is False)

    @property
    def errors(self) -> int:
        return sum(1 for h in self.hits if h[2] is None)

    def worst_window(self, per: float) -> tuple[int, float]:
        """The most admitted hits certainly inside one interval of ``per``
        seconds (a hit is inside when its whole call is), and where."""
        adm = [(t0, t1) for t0, t1, ok in self.hits if ok]
        starts = [t0 for t0, _ in adm]
        worst, at = 0, 0.0
        for i, (w, _) in enumerate(adm):
            end = w + per
            j = bisect.bisect_left(starts, end, lo=i)
            n = sum(1 for _, t1 in adm[i:j] if t1 < end)
            if n > worst:
                worst, at = n, w
        return worst, at

    def unexplained_refusals(
        self, limit: int, buckets: int, span: float = 30.0
    ) -> list[dict[str, Any]]:
        """Refusals the backend could not have made: for a refusal in slot s,
        the units that may have been reserved in slots s-buckets..s when it
        ran (every grant sent before its reply, a failed call counting as
        its whole ask) minus the units certainly given back before it was
        sent, plus what it asked for, must exceed the limit."""
        bad = []
        calls = sorted(self.calls, key=lambda c: c["sent"])
        sent = [c["sent"] for c in calls]
        for r in calls:
            if r.get("granted") != 0 or r.get("error"):
                continue
            s = r["slot"]
            used = 0
            lo = bisect.bisect_left(sent, r["sent"] - span)  # older calls' slots left the window
            hi = bisect.bisect_left(sent, r["replied"])
            for a in calls[lo:hi]:
                if a is r:
                    continue
                if a.get("error"):
                    used += a["want"]  # outcome unknown: it may have reserved all it asked
                elif s - buckets <= a["slot"] <= s:
                    used += a["granted"]
                gb = a.get("give")
                if (
                    gb
                    and not a.get("error")
                    and a["replied"] < r["sent"]
                    and s - buckets <= gb[0] <= s
                ):
                    used -= gb[1]
            if used + r["need"] <= limit:
                bad.append({**r, "could_have_used": used})
        return bad


def main() -> None:
    url, log, threads, seconds, limit, per, res = sys.argv[1:8]
    sys.path.insert(0, str(HERE.parent))
    import tallies
    from tallies.stores import StoreUnavailableError

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(entry: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(entry) + "\n").encode())

    store = tallies.open(url)
    lim = store.limiter("api", int(limit), float(per), resolution=float(res))

    def trace(sent: float, replied: Any, key: str, need: int, want: int, give: Any, g: Any) -> None:
        if replied is None:  # about to send: a SIGKILL may leave it without a reply
            write({"e": "send", "sent": sent, "need": need, "want": want, "give": give})
        elif isinstance(g, BaseException):
            write(
                {
                    "e": "call",
                    "sent": sent,
                    "replied": replied,
                    "need": need,
                    "want": want,
                    "give": give,
                    "error": repr(g),
                }
            )
        else:
            write(
                {
                    "e": "call",
                    "sent": sent,
                    "replied": replied,
                    "need": need,
                    "want": want,
                    "give": give,
                    "granted": g.granted,
                    "slot": g.slot,
                    "used": g.used,
                }
            )

    lim.trace = trace
    stop = time.monotonic() + float(seconds)

    def run() -> None:
        while time.monotonic() < stop:
            t0 = time.time()
            try:
                ok: bool | None = lim.hit("k")
            except StoreUnavailableError:
                ok = None
            t1 = time.time()
            write({"e": "hit", "t0": t0, "t1": t1, "ok": ok})
            time.sleep(0.002 if ok is not False else 0.01)

    ts = [threading.Thread(target=run) for _ in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    try:
        store.close()
    except Exception as exc:  # a server gone at the end: the leases stay counted
        print("close:", exc, file=sys.stderr)
    os.close(fd)


if __name__ == "__main__":
    main()
