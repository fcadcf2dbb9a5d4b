"""``tallies watch`` on real terminals: tmux sessions of fixed sizes (send-keys, capture-pane).

Another process writes into the store while ``watch`` runs; the screen must
show those values.  Ctrl-C must end it with status 0 and give the shell back.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from _look_support import env, need_tool, tallies_cmd, wait_for

import tallies


class Tmux:
    """A private tmux server (its own socket) with one shell of a fixed size."""

    def __init__(self, width: int, height: int) -> None:
        self.tmux = need_tool("tmux")
        self.socket = f"tallies-test-{secrets.token_hex(4)}"
        environ = env()
        environ["TERM"] = "xterm-256color"
        self.run(
            "-f", "/dev/null", "new-session", "-d", "-s", "w", "-x", str(width), "-y",
            str(height), "bash --norc --noprofile", env=environ,
        )  # fmt: skip
        self.type("PS1='READY''$ '; clear")  # a prompt the test can recognise
        self.wait_for_text("READY$")

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "w", "-l", text)
        self.run("send-keys", "-t", "w", "Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "w")

    def wait_for_text(self, *texts: str, timeout: float = 30) -> str:
        last = [""]

        def shown() -> str | None:
            last[0] = self.screen()
            return last[0] if all(t in last[0] for t in texts) else None

        try:
            screen = wait_for(f"{texts} on the screen", shown, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{texts} not on the screen:\n{last[0]}") from None
        assert isinstance(screen, str)
        return screen

    def wait_for_rows(self, *rows: tuple[str, ...], timeout: float = 30) -> str:
        """Wait until the table on the screen has every row of ``rows`` (each
        the row's first cells: name, key, value); return the screen."""
        last = [""]

        def shown() -> str | None:
            last[0] = self.screen()
            have = table_rows(last[0])
            return last[0] if all(any(r[: len(w)] == w for r in have) for w in rows) else None

        try:
            screen = wait_for(f"rows {rows} on the screen", shown, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"rows {rows} not on the screen:\n{last[0]}") from None
        assert isinstance(screen, str)
        return screen

    def shell_pid(self) -> int:
        return int(self.run("display-message", "-p", "-t", "w", "#{pane_pid}").strip())

    def kill(self) -> None:
        subprocess.run(
            [self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=30
        )


def table_rows(screen: str) -> list[tuple[str, ...]]:
    """The body rows of the rich table on ``screen``, as stripped cells."""
    return [
        tuple(cell.strip() for cell in line.strip().strip("│").split("│"))
        for line in screen.splitlines()
        if line.lstrip().startswith("│")
    ]


@pytest.fixture
def tmux_factory() -> Iterator[type[Tmux]]:
    made: list[Tmux] = []

    class Made(Tmux):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Made
    for t in made:
        t.kill()


def write(url: str, code: str) -> None:
    """Write into the store from another process."""
    full = f"import tallies\ns = tallies.open({url!r})\n{code}\n"
    done = subprocess.run(
        [sys.executable, "-c", full], env=env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def watch_command(url: str, *extra: str) -> str:
    return " ".join([sys.executable, "-m", "tallies", "watch", url, "--interval", "0.2", *extra])


def test_rich_view_shows_what_other_processes_write_and_ctrl_c_exits(
    shm_url: str, tmux_factory: type[Tmux]
) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("requests")
        term = tmux_factory(100, 30)
        term.type(watch_command(url, "--top", "2") + "; echo EXIT=$?")
        write(url, "s.counter('requests').increment(4242)")
        write(url, "k = s.keyed('status'); k.increment('200', 17); k.increment('404', 3)")
        write(url, "s.keyed('status').increment('500', 1)")  # the third key: not in the top 2
        screen = term.wait_for_rows(
            ("requests", "", "4,242"),
            ("status", "200", "17"),
            ("status", "404", "3"),
            ("status", "(1 more keys)", "1"),
        )
        assert "┃" in screen  # rich's table, its header
        write(url, "s.counter('requests').increment(1_000_000)")
        term.wait_for_rows(("requests", "", "1,004,242"))
        term.run("send-keys", "-t", "w", "C-c")
        screen = term.wait_for_text("EXIT=0")
        assert screen.rstrip().endswith("READY$"), screen  # the prompt is back
        assert "Traceback" not in screen
        # the terminal works normally again: the cursor is visible, echo works
        term.type("echo still-here")
        term.wait_for_text("still-here\nREADY$")


def test_dumb_terminal_gets_plain_lines(shm_url: str, tmux_factory: type[Tmux]) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("jobs").increment(31337)
        store.keyed("kinds").increment("email", 12)
        term = tmux_factory(100, 30)  # tmux sets TERM for its panes: say dumb here
        term.type("TERM=dumb " + watch_command(url) + "; echo EXIT=$?")
        screen = term.wait_for_text("31,337", "kinds[email]")
        assert "┃" not in screen and "│" not in screen
        assert url in screen
        term.run("send-keys", "-t", "w", "C-c")
        term.wait_for_text("EXIT=0")


def test_narrow_terminal_gets_plain_lines(shm_url: str, tmux_factory: type[Tmux]) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("jobs").increment(7)
        term = tmux_factory(40, 20)
        term.type(watch_command(url) + "; echo EXIT=$?")
        screen = term.wait_for_text("jobs")
        assert "┃" not in screen
        term.run("send-keys", "-t", "w", "C-c")
        term.wait_for_text("EXIT=0")


def test_the_terminal_going_away_ends_watch(shm_url: str, tmux_factory: type[Tmux]) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("jobs").increment(5)
        term = tmux_factory(100, 30)
        shell = term.shell_pid()
        term.type(watch_command(url))
        term.wait_for_text("jobs")
        children = children_of(shell)
        assert len(children) == 1, children
        child = children[0]
        term.kill()  # the terminal is gone: SIGHUP
        wait_for("watch to exit", lambda: not pid_alive(child), timeout=20)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid, read from /proc (no external tool: `ps`
    once hung here with AddressSanitizer preloaded by scripts/test-asan)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()  # state, ppid, ...
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_without_a_terminal_plain_lines_and_sigint_exits_0(shm_url: str) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url) as store:
        store.counter("piped").increment(99)
        proc = subprocess.Popen(
            tallies_cmd("watch", url, "--interval", "0.1"),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert err == ""
    assert lines[0].split()[1] == url
    assert lines[1].split()[:2] == ["piped", "99"]


def test_closed_stdout_is_a_one_line_error(shm_url: str) -> None:
    url = shm_url.partition("?")[0]
    with tallies.open(shm_url):
        cmd = " ".join(tallies_cmd("watch", url)) + " >&-"
        done = subprocess.run(
            ["bash", "-c", cmd], env=env(), capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 2
    assert done.stderr == "tallies watch: no terminal: standard output is closed\n"


def test_watch_bad_input_is_a_one_line_error() -> None:
    for args, words in [
        (["shm://tallies-test-no-such-segment"], "no such store"),
        (["nosuch://x"], "unknown store scheme"),
    ]:
        done = subprocess.run(
            tallies_cmd("watch", *args), env=env(), capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("tallies watch: ") and words in done.stderr
        assert len(done.stderr.splitlines()) == 1
    done = subprocess.run(
        tallies_cmd("watch", "shm://x", "--interval", "0"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "interval" in done.stderr and "Traceback" not in done.stderr
