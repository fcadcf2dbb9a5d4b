"""``tallies.limits``: the storage schemes limits finds, limits' strategies
over them (the same answers as over limits' memory:// where the semantics are
the same), and the README's examples, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from _contract import STORES

ROOT = Path(__file__).resolve().parents[2]


def test_importing_tallies_never_imports_limits() -> None:
    code = (
        "import sys, tallies, tallies.stores\n"
        "with tallies.open('memory://') as s:\n"
        "    s.limiter('a', 1, 1).hit()\n"
        "assert 'limits' not in sys.modules, 'tallies imported limits'\n"
        "import tallies.limits\n"
        "assert 'limits' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_every_tallies_scheme_is_registered_with_limits() -> None:
    from limits.storage import storage_from_string

    import tallies.limits

    for scheme in tallies.stores.schemes():
        assert f"tallies+{scheme}" in tallies.limits.SCHEMES
    st = storage_from_string("tallies+memory://")
    assert isinstance(st, tallies.limits.TalliesStorage) and st.check()
    with pytest.raises(ValueError, match="unknown store scheme"):
        tallies.limits.TalliesStorage("tallies+nope://x")


@pytest.fixture(params=[s for s in STORES if "write-through" not in s])
def storage_uri(request: pytest.FixtureRequest) -> str:
    return "tallies+" + STORES[request.param](request)


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_limits_strategies_admit_the_limit_then_refuse(storage_uri: str, strategy: str) -> None:
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import STRATEGIES

    import tallies.limits

    st = storage_from_string(storage_uri)
    lim = STRATEGIES[strategy](st)
    item = parse("5/minute")
    assert lim.test(item, "u")
    assert [lim.hit(item, "u") for _ in range(7)] == [True] * 5 + [False] * 2
    assert not lim.test(item, "u")
    stats = lim.get_window_stats(item, "u")
    assert stats.remaining == 0
    assert 0 < stats.reset_time - __import__("time").time() <= 61.5
    assert lim.hit(item, "other", cost=5) and not lim.hit(item, "other")
    assert not lim.hit(item, "big", cost=6)  # more than the limit: refused
    lim.clear(item, "u")
    assert lim.test(item, "u") and lim.get_window_stats(item, "u").remaining == 5
    assert st.reset() is not None
    assert lim.hit(item, "other")
    tallies.destroy(storage_uri.partition("+")[2])


def _examples(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_limit_examples_do_what_they_say(tmp_path: Path) -> None:
    """docs/limits.md's examples (the first is the README's): the Flask app
    admits 100 and refuses the rest; the store API example's asserts hold
    (the docs test runs every block too; this one also checks the answers)."""
    blocks = _examples(ROOT / "docs" / "limits.md")
    assert len(blocks) == 2
    flask_app, store_api = blocks
    readme = (ROOT / "README.md").read_text().split('"100 per minute" that means 100', 1)[1]
    assert _examples(ROOT / "README.md")[-1:] and flask_app in readme
    (tmp_path / "app.py").write_text(flask_app)
    check = (
        "from app import app\n"
        "c = app.test_client()\n"
        "got = [c.get('/api').status_code for _ in range(105)]\n"
        "assert got == [200] * 100 + [429] * 5, got\n"
        "import tallies\n"
        "tallies.destroy('shm://myapp')\n"
    )
    env = {**os.environ, "TALLIES_SHM_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, check=True, timeout=120)
    subprocess.run([sys.executable, "-c", store_api], env=env, check=True, timeout=60)
