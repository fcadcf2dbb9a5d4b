"""The WSGI app of ``benchmarks/exporters.py``: counts each request, two ways.

``TALLIES_BENCH_MODE=shm``: into the ``shm://`` store ``TALLIES_BENCH_URL``
(counter ``requests``, keyed counter ``status``).  ``TALLIES_BENCH_MODE=prom``:
into a prometheus_client ``Counter`` in its multiprocess mode (the
``PROMETHEUS_MULTIPROC_DIR`` directory).  ``/`` is counted and answers the
worker's pid; ``/ready`` is not counted.  Loaded once in gunicorn's master
(``--preload``), so a recycled worker costs a fork, not an import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

MODE = os.environ.get("TALLIES_BENCH_MODE", "shm")

if MODE == "shm":
    import tallies

    _store = tallies.open(os.environ["TALLIES_BENCH_URL"])
    _requests = _store.counter("requests")
    _status = _store.keyed("status")

    def _count() -> None:
        _requests.increment()
        _status.increment("200")

else:
    from prometheus_client import Counter

    _prom_requests = Counter("requests", "requests served")

    def _count() -> None:
        _prom_requests.inc()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/ready":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ready"]
    _count()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
