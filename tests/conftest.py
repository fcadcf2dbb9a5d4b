"""Every test of the in-process counters runs twice: on the C core and on the pure fallback.

The ``impl`` fixture is the implementation module, ``tallies._tallies`` (the C core) or
``tallies._pure``; tests build counters as ``impl.Counter(...)`` and
``impl.ShardedCounter(...)``.

When the C core cannot be imported, its half of the suite is skipped with the
import error as the reason, unless the environment sets ``TALLIES_REQUIRE_C=1``
(CI and the test command do): then every test that needs the C core fails, so
a broken build can never pass as a green run on the fallback alone.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
from _rates_support import rates_impl  # noqa: F401 - the rates implementation fixture
from _redis_support import aof_server, redis_cluster, redis_server  # noqa: F401 - real servers
from _shm_support import shm_url  # noqa: F401 - the shm:// segment fixture
from _support import core_import_error, unavailable


def c_core() -> ModuleType:
    """The C core module; fails (TALLIES_REQUIRE_C=1) or skips when it is missing."""
    exc = core_import_error()
    if exc is not None:
        reason = f"the C core tallies._tallies is not importable: {exc!r}"
        unavailable(reason)
    return importlib.import_module("tallies._tallies")


def pure_fallback() -> ModuleType:
    return importlib.import_module("tallies._pure")


@pytest.fixture(params=["c", "pure"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation under test: the C core, then the pure fallback."""
    return c_core() if request.param == "c" else pure_fallback()


@pytest.fixture
def core() -> ModuleType:
    """The C core alone, for what only it promises (object sizes, parity checks)."""
    return c_core()


@pytest.fixture
def pure() -> ModuleType:
    return pure_fallback()
