"""scripts/ft-bundle: the free-threaded interpreter with tallies, packed to run elsewhere.

The bundle is what carried the free-threaded build to a 16-CPU machine (README,
"Scaling on 16 CPUs"); this checks that it runs on its own: unpacked in a fresh
folder, with an empty environment, from another working directory, its tallies
has the C core, the GIL stays off, and the checkout's `tallies bench --threads`
(benchmarks/, which the bundle does not carry) runs on it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sysconfig
import tarfile

import pytest
from _support import FREE_THREADED

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        not FREE_THREADED,
        reason="the bundle packs the free-threaded build: this runs in scripts/free-threaded's leg",
    ),
    pytest.mark.skipif(
        "--with-thread-sanitizer" in (sysconfig.get_config_var("CONFIG_ARGS") or ""),
        reason="the bundle packs the plain free-threaded build, checked in its own leg",
    ),
]


def test_the_bundle_runs_tallies_on_its_own(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "ft.tar.xz"
    env = {**os.environ, "XZ_OPT": "-T0 -0"}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ft-bundle"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert "ft/bin/python3.13t" in names
        assert not any("/test/" in n or n.endswith(".a") for n in names)
        tar.extractall(tmp_path / "x", filter="tar")
    py = tmp_path / "x" / "ft" / "bin" / "python3.13t"
    here = tmp_path / "elsewhere"
    here.mkdir()

    def bundled(*args: str, cwd: pathlib.Path = here) -> subprocess.CompletedProcess[str]:
        """The bundled interpreter, with an empty environment, in another folder."""
        return subprocess.run(
            [str(py), *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={},
            cwd=cwd,
            check=False,
        )

    probe = bundled(
        "-c",
        "import sys, tallies;"
        " print(tallies.IMPLEMENTATION, sys._is_gil_enabled(), tallies.__file__)",
    )
    assert probe.returncode == 0, probe.stderr
    impl, gil, where = probe.stdout.split()
    assert (impl, gil) == ("c", "False")
    assert pathlib.Path(where).is_relative_to(tmp_path / "x")  # its own copy, not this tree's
    installed = bundled("-m", "tallies", "bench", "--threads", "1,2")
    assert installed.returncode == 2 and "./tallies bench" in installed.stderr
    bench = bundled("-m", "benchmarks", "--threads", "1,2", "--quick", cwd=ROOT)  # from a clone
    assert bench.returncode == 0, bench.stderr
    assert "Scaling curve" in bench.stdout and "Every count was exact" in bench.stdout
