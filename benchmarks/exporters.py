"""gunicorn workers counting requests: ``tallies serve`` vs prometheus_client's multiprocess mode.

One scenario, run for each exporter in the same run (``scripts/compare-multiprocess``,
and a short version in tests/look/test_gunicorn_exporters.py):

- a gunicorn app (``exporters_app``) with ``workers`` sync workers,
  loaded once (``--preload``) and recycled every ``max_requests`` requests
  (+ up to ``jitter``), counts each request it serves;
- a bounded load generator on loopback (``clients`` threads, at most
  ``requests`` requests and ``deadline`` seconds) counts the 200 answers;
- an exporter answers ``/metrics`` over HTTP: ``tallies serve shm://...`` for
  tallies, or ``prometheus_client.start_http_server`` over a registry with a
  ``MultiProcessCollector`` for prometheus_client (``PROMETHEUS_MULTIPROC_DIR``);
  a scraper reads it every ``scrape_every`` seconds and records the time a
  scrape took and the files (and bytes) the exporter's state occupies on disk.

The result says how many requests were answered 200, what the last scrape
said, how many workers served (recycles = workers that served - ``workers``),
and how scrape time and files evolved.  Nothing is simulated.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .harness import ROOT
from .servers import free_port, stop_process

__all__ = ["Result", "format_table", "main", "run_scenario"]

_PROM_EXPORTER = """
import sys, time
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry)
server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
print(f"http://127.0.0.1:{server.server_port}/metrics", flush=True)
sys.stdin.read()
"""


@dataclass
class Scrape:
    at: float
    seconds: float
    files: int
    bytes: int
    total: int | None


@dataclass
class Result:
    exporter: str
    workers: int
    max_requests: int
    jitter: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    pids: int = 0
    recycles: int = 0
    final_total: int | None = None
    load_seconds: float = 0.0
    scrapes: list[Scrape] = field(default_factory=list)
    scrape_errors: list[str] = field(default_factory=list)

    def first(self, n: int = 3) -> list[Scrape]:
        return self.scrapes[: max(1, min(n, len(self.scrapes) // 2))]

    def last(self, n: int = 3) -> list[Scrape]:
        return self.scrapes[-max(1, min(n, len(self.scrapes) // 2)) :]


def _env() -> dict[str, str]:
    """The environment of the processes started: they import ``benchmarks`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _total(text: str, metric: str) -> int | None:
    found = re.search(rf"^{metric} (\S+)$", text, re.MULTILINE)
    return None if found is None else int(float(found.group(1)))


def _disk(files: list[Path]) -> tuple[int, int]:
    sizes = []
    for f in files:
        with contextlib.suppress(FileNotFoundError):  # removed while we looked
            sizes.append(f.stat().st_size)
    return len(sizes), sum(sizes)


def run_scenario(
    exporter: str,
    *,
    requests: int = 3000,
    clients: int = 6,
    workers: int = 4,
    max_requests: int = 8,
    jitter: int = 4,
    deadline: float = 40.0,
    scrape_every: float = 0.5,
) -> Result:
    """Run the scenario once with ``exporter`` "tallies" or "prometheus_client"."""
    if exporter not in ("tallies", "prometheus_client"):
        raise ValueError(f"unknown exporter {exporter!r}")
    import tallies

    result = Result(exporter, workers, max_requests, jitter)
    tmp = Path(tempfile.mkdtemp(prefix="tallies-exporters-"))
    env = _env()
    procs: list[subprocess.Popen[Any]] = []
    url = ""
    try:
        if exporter == "tallies":
            url = f"shm://bench-exporters-{secrets.token_hex(4)}"
            store = tallies.open(url + f"?slabs={workers * 4}")
            store.close()
            env["TALLIES_BENCH_MODE"] = "shm"
            env["TALLIES_BENCH_URL"] = url
            from tallies.stores.shm import segment_path

            seg = Path(segment_path(url.removeprefix("shm://")))

            def state_files() -> list[Path]:
                return sorted(seg.parent.glob(f"{seg.name}*"))

            exporter_cmd = [sys.executable, "-m", "tallies", "serve", url, "--port", "0"]
            metric = "tallies_requests_total"
        else:
            prom_dir = tmp / "prometheus_multiproc"
            prom_dir.mkdir()
            env["TALLIES_BENCH_MODE"] = "prom"
            env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)

            def state_files() -> list[Path]:
                return sorted(prom_dir.iterdir())

            exporter_cmd = [sys.executable, "-c", _PROM_EXPORTER]
            metric = "requests_total"

        port = free_port()
        gunicorn = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "--preload",
                "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
                "--max-requests", str(max_requests), "--max-requests-jitter", str(jitter),
                "--log-level", "warning", "--worker-tmp-dir", str(tmp),
                "benchmarks.exporters_app:app",
            ],
            env=env, cwd=tmp, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(gunicorn)
        _wait_ready(f"http://127.0.0.1:{port}/ready", gunicorn)

        exp = subprocess.Popen(
            exporter_cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(exp)
        stream = exp.stdout if exporter != "tallies" else exp.stderr
        assert stream is not None
        found = re.search(r"http://\S+/metrics", stream.readline())
        if not found:
            raise RuntimeError(f"the {exporter} exporter did not start")
        metrics_url = found.group(0)

        def scrape() -> Scrape:
            t0 = time.perf_counter()
            with urllib.request.urlopen(metrics_url, timeout=60) as reply:
                text = reply.read().decode()
            seconds = time.perf_counter() - t0
            files, size = _disk(state_files())
            return Scrape(time.monotonic() - start, seconds, files, size, _total(text, metric))

        stop = threading.Event()

        def scraper() -> None:
            while not stop.wait(scrape_every):
                try:
                    result.scrapes.append(scrape())
                except OSError as exc:  # an HTTP error or a timeout: recorded, not hidden
                    body = exc.read().decode(errors="replace") if hasattr(exc, "read") else ""
                    result.scrape_errors.append(f"{exc} {body}".strip())

        lock = threading.Lock()
        pids: set[bytes] = set()
        counts = {"sent": 0, "ok": 0, "errors": 0}
        start = time.monotonic()
        end = start + deadline

        def client() -> None:
            while time.monotonic() < end:
                with lock:
                    if counts["sent"] >= requests:
                        return
                    counts["sent"] += 1
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    conn.request("GET", "/")
                    reply = conn.getresponse()
                    body = reply.read()
                    with lock:
                        if reply.status == 200:
                            counts["ok"] += 1
                            pids.add(body)
                        else:
                            counts["errors"] += 1
                except OSError:
                    with lock:
                        counts["errors"] += 1
                finally:
                    conn.close()

        scraping = threading.Thread(target=scraper, daemon=True)
        scraping.start()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.load_seconds = time.monotonic() - start
        stop.set()
        scraping.join()
        final = scrape()
        result.scrapes.append(final)
        result.final_total = final.total
        result.sent, result.ok, result.errors = counts["sent"], counts["ok"], counts["errors"]
        result.pids = len(pids)
        result.recycles = max(0, len(pids) - workers)
        return result
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if url:
            tallies.destroy(url)
        shutil.rmtree(tmp, ignore_errors=True)


def _ms(scrapes: list[Scrape]) -> str:
    return f"{min(s.seconds for s in scrapes) * 1e3:.1f}" if scrapes else "-"


def format_table(results: list[Result]) -> str:
    head = (
        "| exporter | requests answered 200 | last scrape's total | workers that served"
        " (recycles) | files on disk, first → last scrape | bytes, first → last"
        " | scrape ms, first → last (min of 3) | failed scrapes |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        first, last = r.first(), r.last()
        lines.append(
            f"| {r.exporter} | {r.ok:,} | {r.final_total if r.final_total is not None else '-':,} "
            f"| {r.pids:,} ({r.recycles:,}) | {first[0].files:,} → {last[-1].files:,} "
            f"| {first[0].bytes:,} → {last[-1].bytes:,} | {_ms(first)} → {_ms(last)} "
            f"| {len(r.scrape_errors)} of {len(r.scrapes) + len(r.scrape_errors)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="compare-multiprocess",
        description="gunicorn workers recycled under load: tallies serve vs "
        "prometheus_client's multiprocess mode, in one run",
    )
    p.add_argument("--requests", type=int, default=1_500)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=1)
    p.add_argument("--jitter", type=int, default=1)
    p.add_argument("--deadline", type=float, default=900.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = [
        run_scenario(
            exporter,
            requests=args.requests,
            clients=args.clients,
            workers=args.workers,
            max_requests=args.max_requests,
            jitter=args.jitter,
            deadline=args.deadline,
        )
        for exporter in ("tallies", "prometheus_client")
    ]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(format_table(results))
        for r in results:
            exact = "exact" if r.final_total == r.ok else "NOT EXACT"
            print(
                f"{r.exporter}: {r.sent:,} sent, {r.ok:,} answered 200, {r.errors} errors,"
                f" last scrape {r.final_total}: {exact}; load ran {r.load_seconds:.1f} s"
            )
    return 0 if all(r.final_total == r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
