"""``tallies serve URL [--host 127.0.0.1] [--port 9464]``: a Prometheus ``/metrics`` endpoint.

A sidecar exporter for any store: gunicorn, uWSGI, Celery or
``multiprocessing`` workers count into ``shm://app``; one ``tallies serve
shm://app`` process answers Prometheus.  Each scrape reads the store once
(``tallies.prometheus.Collector``); the workers pay nothing for it, and
nothing on disk grows with the number of workers that came and went.

The server is ``http.server`` from the standard library (one thread per
request).  SIGINT and SIGTERM stop it cleanly.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from ..stores import Store, redact_url
from .look import UserError

__all__ = ["make_server", "serve"]


def make_server(store: Store, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` for ``store`` (not yet serving)."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ..prometheus import Collector
    except ImportError:
        raise UserError(
            "prometheus_client is not installed: pip install tallies[prometheus]"
        ) from None

    shown = redact_url(store.url)  # never the password: see stores/_redact.py
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(store))
    lock = threading.Lock()  # one snapshot at a time: scrapes are rare, keep them cheap

    class Handler(BaseHTTPRequestHandler):
        server_version = "tallies"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    with lock:
                        body = generate_latest(registry)
                except Exception as exc:  # a corrupt or removed store: say so, keep serving
                    text = f"tallies: cannot read {shown}: {redact_url(str(exc))}\n"
                    self._send(500, text.encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, body, CONTENT_TYPE_LATEST)
            elif path == "/":
                text = f"tallies serve {shown}: metrics at /metrics\n"
                self._send(200, text.encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found; metrics are at /metrics\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False  # a scrape in flight does not hold up the exit
        allow_reuse_address = True

    try:
        return Server((host, port), Handler)
    except OSError as exc:
        where = f"cannot listen on {host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"{where}: the address is already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"{where}: no such local address") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"{where}: permission denied") from None
        raise UserError(f"{where}: {exc.strerror or exc}") from None
    except (UnicodeError, ValueError) as exc:
        raise UserError(f"cannot listen on {host!r}:{port}: {exc}") from None


def serve(url: str, host: str, port: int) -> int:
    """Serve ``/metrics`` for the store at ``url`` until SIGINT or SIGTERM."""
    from ..stores import open as open_store

    store = open_store(url, create=False)
    try:
        server = make_server(store, host, port)
        bound_host, bound_port = server.server_address[:2]

        def stop(signum: int, frame: FrameType | None) -> None:
            # Never raise from here (it could land anywhere, inside a lock):
            # ask serve_forever to return, from a thread, as shutdown() waits for it.
            threading.Thread(target=server.shutdown, daemon=True).start()

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(
                f"tallies serve: {redact_url(url)} at http://{bound_host!s}:{bound_port}/metrics"
                " (Ctrl-C stops)",
                file=sys.stderr,
                flush=True,
            )
            server.serve_forever(poll_interval=0.2)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            server.server_close()
        print("tallies serve: stopped", file=sys.stderr, flush=True)
    finally:
        store.close()
    return 0
