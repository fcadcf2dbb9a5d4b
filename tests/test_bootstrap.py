"""scripts/bootstrap.sh's install stamp: when .venv must be reinstalled.

./tallies asks for its own extras (prometheus, watch) without -Werror and
./run-tests for the test extra with -Werror; one install that covers both
must serve both, and a changed source always reinstalls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bootstrap.sh"


def _bash(call: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'. "{SCRIPT}" && {call}'], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("have", "want", "served"),
    [
        ("h1 1 prometheus,test,watch", "h1 0 prometheus,watch", True),
        ("h1 1 prometheus,test,watch", "h1 1 test", True),
        ("h1 1 test", "h1 0 ", True),
        ("h1 0 prometheus,watch", "h1 1 test", False),  # -Werror and the test extra missing
        ("h1 1 prometheus,watch", "h1 1 prometheus,test", False),  # test missing
        ("h1 0 prometheus,test,watch", "h1 1 test", False),  # built without -Werror
        ("h1 1 prometheus,test,watch", "h2 0 ", False),  # the sources changed
        ("", "h1 0 ", False),  # nothing installed yet
    ],
)
def test_an_install_serves_what_it_covers(have: str, want: str, served: bool) -> None:
    done = _bash(f'_satisfied "{have}" "{want}"')
    assert (done.returncode == 0) is served, done.stderr


def test_reinstalls_keep_the_union_of_extras() -> None:
    done = _bash('_union "test,prometheus" "watch,prometheus"')
    assert done.stdout.strip() == "prometheus,test,watch"
    assert _bash('_union "" ""').stdout.strip() == ""


@pytest.mark.parametrize(
    ("setting", "status"),
    [({"CI": "true"}, 1), ({"TALLIES_REQUIRE_REDIS": "1"}, 1), ({}, 0)],
    ids=["CI", "TALLIES_REQUIRE_REDIS", "developer"],
)
@pytest.mark.parametrize("need", ["_need_redis_server", "_need_test_tools", "_need_chromium"])
def test_a_server_that_cannot_be_installed_fails_where_servers_are_required(
    need: str, setting: dict[str, str], status: int
) -> None:
    """redis-server, prometheus, tmux or chromium missing, and apt-get failing: CI and
    TALLIES_REQUIRE_REDIS=1 stop right there; a developer's run goes on (the
    tests then skip, saying why)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TALLIES_REQUIRE_REDIS")}
    env.update(setting)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'. "{SCRIPT}" && _apt_install() {{ return 1; }} && PATH=/nonexistent {need}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == status, done.stderr
    if status:
        assert "CI" in done.stderr and "requir" in done.stderr


def test_the_benchmarks_peers_are_installed_once_per_requirements_file(tmp_path: Path) -> None:
    """./tallies bench installs benchmarks/requirements.txt into .venv when that file
    changed since the last install, and carries on (saying so) when pip fails."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >>"{calls}"\nexit "${{FAKE_PIP_STATUS:-0}}"\n')
    python.chmod(0o755)

    def install(status: int = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f'. "{SCRIPT}" && bootstrap_benchmarks && echo carried on'],
            capture_output=True,
            text=True,
            timeout=30,
            env={
                "PATH": "/usr/bin:/bin",
                "TALLIES_VENV": str(venv),
                "FAKE_PIP_STATUS": str(status),
            },
        )

    failed = install(status=1)
    assert failed.stdout == "carried on\n" and "could not install them" in failed.stderr
    assert not (venv / ".benchmarks-stamp").exists()
    done = install()
    requirements = SCRIPT.parents[1] / "benchmarks" / "requirements.txt"
    assert calls.read_text().splitlines()[-1] == f"-m pip install -r {requirements}"
    assert "installing the benchmarks' peers" in done.stderr
    again = install()
    assert again.stderr == "" and len(calls.read_text().splitlines()) == 2  # not reinstalled


def test_the_docs_tools_are_installed_once_per_requirements_file(tmp_path: Path) -> None:
    """./run-tests and scripts/docs install docs/requirements.txt into .venv when that
    file changed since the last install; a failed install stops them (the docs tests
    cannot run without it), showing pip's log."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    python = venv / "bin" / "python"
    python.write_text(
        f'#!/bin/sh\necho "$*" >>"{calls}"\necho pip says why\nexit "${{FAKE_PIP_STATUS:-0}}"\n'
    )
    python.chmod(0o755)

    def install(status: int = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f'. "{SCRIPT}" && bootstrap_docs && echo carried on'],
            capture_output=True,
            text=True,
            timeout=30,
            env={
                "PATH": "/usr/bin:/bin",
                "TALLIES_VENV": str(venv),
                "FAKE_PIP_STATUS": str(status),
            },
        )

    failed = install(status=1)
    assert failed.returncode != 0 and failed.stdout == ""
    assert (
        "pip says why" in failed.stderr
        and "could not install docs/requirements.txt" in failed.stderr
    )
    assert not (venv / ".docs-stamp").exists()
    done = install()
    requirements = SCRIPT.parents[1] / "docs" / "requirements.txt"
    assert calls.read_text().splitlines()[-1] == f"-m pip install -r {requirements}"
    assert done.stdout == "carried on\n" and "installing the docs site's tools" in done.stderr
    again = install()
    assert again.stderr == "" and len(calls.read_text().splitlines()) == 2  # not reinstalled
