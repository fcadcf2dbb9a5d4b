"""tallies.progress: one bar over counters that threads and processes increment.

Without a terminal the bar writes plain lines; on a terminal (a real pty here)
it redraws one line in place.  Either way the final state is the counter's
exact value.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
from _look_support import env

import tallies


def count_chunk(url: str, n: int) -> int:
    with tallies.open(url) as store:
        counter = store.counter("work")
        for _ in range(n // 1000):
            counter.increment(1000)
            time.sleep(0.001)  # each worker runs at least 0.2 s
    return n


def values_in(text: str) -> list[int]:
    return [int(m.replace(",", "")) for m in re.findall(r"([\d,]+)/[\d,]+ \[", text)]


@pytest.mark.parametrize("kind", ["Counter", "ShardedCounter"])
def test_threads_plain_lines_and_an_exact_final_line(kind: str) -> None:
    counter = getattr(tallies, kind)()
    out = io.StringIO()
    total = 8 * 50_000

    def work() -> None:
        for _ in range(50_000):
            counter.increment()

    with tallies.progress(counter, total=total, desc="tasks", file=out, plain_interval=0.05):
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("tasks: 100% |")
    assert f" {total:,}/{total:,} [" in lines[-1]
    seen = values_in(out.getvalue())
    assert seen == sorted(seen) and seen[-1] == total


def test_processes_in_big_chunks_into_one_shm_counter(shm_url: str) -> None:
    # The tqdm #973 case: workers are inside their chunks, the bar still moves.
    total = 4 * 200_000
    with tallies.open(shm_url) as store:
        counter = store.counter("work")
        out = io.StringIO()
        with (
            tallies.progress(counter, total=total, desc="chunks", file=out, plain_interval=0.02),
            ProcessPoolExecutor(max_workers=4) as pool,
        ):
            done = sum(pool.map(count_chunk, [shm_url] * 4, [total // 4] * 4))
        assert done == total == counter.value()
    seen = values_in(out.getvalue())
    assert seen == sorted(seen) and seen[-1] == total
    assert any(0 < v < total for v in seen), out.getvalue()  # it moved while they worked
    assert out.getvalue().splitlines()[-1].startswith("chunks: 100% |")


def test_no_total_shows_count_and_rate() -> None:
    counter = tallies.Counter()
    out = io.StringIO()
    with tallies.progress(counter, file=out):
        counter.increment(12_345)
    assert re.fullmatch(r"12,345 \[00:00, [\d,.]+/s\]\n", out.getvalue())


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="value\\(\\)"):
        tallies.progress(object())
    with pytest.raises(TypeError, match="total"):
        tallies.progress(tallies.Counter(), total=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        tallies.progress(tallies.Counter(), total=-1)
    with pytest.raises(ValueError, match="interval"):
        tallies.progress(tallies.Counter(), interval=0)


def test_a_closed_output_stops_drawing_not_counting() -> None:
    counter = tallies.Counter()
    out = io.StringIO()
    bar = tallies.progress(counter, total=100, file=out, plain_interval=0.01).start()
    out.close()
    counter.increment(100)
    time.sleep(0.1)
    bar.close()  # no exception
    assert bar.last == 100


def read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into.append(chunk)


def test_on_a_terminal_the_bar_is_redrawn_in_place_within_its_width() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_all, args=(master, chunks))
    reader.start()
    tty = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    try:
        counter = tallies.ShardedCounter()
        total = 50_000
        with tallies.progress(counter, total=total, desc="tty", file=tty, interval=0.02):
            for _ in range(50):
                counter.increment(1_000)
                time.sleep(0.005)
    finally:
        tty.close()
        reader.join(timeout=10)
        os.close(master)
    text = b"".join(chunks).decode()
    frames = [f for f in text.replace("\r\n", "\n").split("\r") if f.strip()]
    assert len(frames) >= 3, text  # redrawn, not appended
    assert all(len(f.rstrip("\n")) <= 59 for f in frames), frames  # fits in 60 columns
    assert frames[-1].endswith("\n") and f"{total:,}/{total:,}" in frames[-1]
    assert "100%" in frames[-1]
    seen = values_in(text)
    assert seen == sorted(seen) and seen[-1] == total


def test_default_output_is_stderr_in_plain_lines() -> None:
    code = (
        "import tallies\n"
        "c = tallies.Counter()\n"
        "with tallies.progress(c, total=3, desc='jobs'):\n"
        "    c.increment(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == ""
    assert re.fullmatch(r"jobs: 100% \|#+\| 3/3 \[00:00<00:00, [\d.,]+/s\]\n", done.stderr)
