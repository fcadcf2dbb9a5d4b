"""tallies' benchmarks: kept in the repository, never in the installed package.

Run them from a checkout with ``./tallies bench`` (the same flags as before:
``--quick``, ``--processes``, ``--stores``, ``--threads [N,N...]``,
``--rounds N``, ``--json``), which installs the peers they compare with
(``requirements.txt``) into ``.venv`` and runs ``python -m benchmarks``.

- ``harness.py``: the one harness: interleaved rounds, ratios per round,
  verdicts (met / missed / inconclusive, with the reason), rows, the text
  table and the JSON report (date, machine, commit, Python, every round).
- ``servers.py``: free ports and the Redis launcher, shared with the tests.
- the parts of the default report: ``counters.py`` (single thread, the
  tutorial's workload, sizes), ``keyed.py``, ``rates.py``; the other modes:
  ``processes.py``, ``stores.py`` (+ ``redis_store.py``), ``threads.py``;
  ``exporters.py`` (+ ``exporters_app.py``, its gunicorn app) is
  ``scripts/compare-multiprocess``.
"""
