"""What the counter tests share: the int64 range, the exact error messages, odd inputs.

The messages here are the specification both implementations must match word
for word (see ``src/tallies/_pure/counter.py`` and ``_c/counter.c``).
"""

from __future__ import annotations

import importlib
import os
import sysconfig
from decimal import Decimal
from fractions import Fraction
from typing import Any, NoReturn

import pytest
from hypothesis import strategies as st

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: CI and the test command set TALLIES_REQUIRE_C=1: then a missing C core fails the tests.
REQUIRE_C = os.environ.get("TALLIES_REQUIRE_C") == "1"

#: CI (``CI=true``, which .ci/run sets) requires every server and tool a test
#: starts: redis-server and Redis Cluster (tests/_redis_support.py), Prometheus
#: and tmux (tests/look/_look_support.py), and the next ones (Valkey,
#: PostgreSQL, Chromium) the same way: ``unavailable(reason,
#: required=REQUIRE_SERVERS, by="CI")``, so CI cannot pass with a backend skipped.
REQUIRE_SERVERS = os.environ.get("CI") == "true"

#: True on a free-threaded CPython build (``--disable-gil``, e.g. 3.13t), whatever the GIL's state.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

#: The docs site (built by mkdocs, checked in Chromium) is one artefact: the GIL
#: leg (./run-tests) builds and checks it.  The free-threaded leg and the legs
#: of the other CPythons and of the wheel (scripts/test-python and
#: scripts/test-wheel set TALLIES_DOCS_SITE=elsewhere; their roots have no
#: Chromium, their venvs no docs tools) run the docs' examples only.
SITE_ELSEWHERE = FREE_THREADED or os.environ.get("TALLIES_DOCS_SITE") == "elsewhere"


def unavailable(
    reason: str, *, required: bool = REQUIRE_C, by: str = "TALLIES_REQUIRE_C=1"
) -> NoReturn:
    """A test's prerequisite is missing: skip it, or fail it where ``required``
    (CI and ./run-tests) says the prerequisite must be there."""
    if required:
        pytest.fail(f"{reason}, and {by} requires it", pytrace=False)
    pytest.skip(reason)


def core_import_error() -> BaseException | None:
    """Why ``tallies._tallies`` (the C core) cannot be imported, or None when it can."""
    try:
        importlib.import_module("tallies._tallies")
    except ImportError as exc:
        return exc
    return None


def in_int64(v: int) -> bool:
    return INT64_MIN <= v <= INT64_MAX


def arg_overflow(fname: str, obj: object) -> str:
    return f"{fname}() argument {obj!r} is outside the signed 64-bit range"


def result_overflow(op: str, n: int, current: int) -> str:
    return (
        f"{op}({n}) would move the counter outside the signed 64-bit range; it stays at {current}"
    )


def stripe_overflow(op: str, n: int) -> str:
    return (
        f"{op}({n}) would move a stripe of the counter outside the signed 64-bit range; "
        "nothing was changed"
    )


class Index:
    """A user-defined integer-like object: only ``__index__``."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v

    def __repr__(self) -> str:
        return f"Index({self.v})"


class NumpyLikeInt:
    """Behaves like ``numpy.int64``: ``__index__``, ``__int__`` and ``__float__``."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v

    def __int__(self) -> int:
        return self.v

    def __float__(self) -> float:
        return float(self.v)

    def __repr__(self) -> str:
        return f"np.int64({self.v})"


class BadIndex:
    """``__index__`` itself fails: its error must come through, nothing changed."""

    def __index__(self) -> int:
        raise ZeroDivisionError("no index today")


# Not integers: each must raise TypeError naming its type and change nothing.
NOT_INTEGERS: list[Any] = [
    pytest.param(1.5, id="float"),
    pytest.param(2.0, id="integral-float"),
    pytest.param("1", id="str"),
    pytest.param(None, id="None"),
    pytest.param(Decimal(1), id="Decimal"),
    pytest.param(Fraction(1, 2), id="Fraction"),
    pytest.param(Fraction(2, 1), id="integral-Fraction"),
    pytest.param(1j, id="complex"),
    pytest.param([1], id="list"),
    pytest.param(b"\x01", id="bytes"),
    pytest.param(object(), id="object"),
]

# Integer-like objects accepted through __index__: (object, the int it means).
INDEX_LIKE: list[Any] = [
    pytest.param(Index(7), 7, id="custom-__index__"),
    pytest.param(NumpyLikeInt(-3), -3, id="numpy-like"),
    pytest.param(True, 1, id="True"),
    pytest.param(False, 0, id="False"),
    pytest.param(5, 5, id="int"),
]

# Integers outside int64 (and integer-likes that mean one): OverflowError.
OUT_OF_RANGE: list[Any] = [
    pytest.param(2**63, id="2**63"),
    pytest.param(-(2**63) - 1, id="-2**63-1"),
    pytest.param(2**64, id="2**64"),
    pytest.param(-(2**200), id="-2**200"),
    pytest.param(Index(2**63), id="Index(2**63)"),
]

# ---- hypothesis strategies ---------------------------------------------------

_EDGES = [
    0,
    1,
    -1,
    2,
    -2,
    2**62,
    -(2**62),
    INT64_MAX,
    INT64_MAX - 1,
    INT64_MIN,
    INT64_MIN + 1,
    2**63,
    INT64_MIN - 1,
    2**64,
    -(2**64),
    2**64 + 1,
]

#: Amounts for updates: small ones, the int64 edges, and ints just or far outside it.
amounts = st.one_of(
    st.integers(-3, 3),
    st.sampled_from(_EDGES),
    st.integers(INT64_MAX - 3, INT64_MAX + 3),
    st.integers(INT64_MIN - 3, INT64_MIN + 3),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-(2**80), 2**80),
)

#: Values a counter may hold, weighted towards the edges so overflow paths run.
int64_values = st.one_of(
    st.sampled_from([0, 1, -1, INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1]),
    st.integers(INT64_MAX - 5, INT64_MAX),
    st.integers(INT64_MIN, INT64_MIN + 5),
    st.integers(INT64_MIN, INT64_MAX),
)

#: Values for set()/compare_and_set(): mostly valid, sometimes just outside.
set_values = st.one_of(int64_values, amounts)

#: Non-integers for the "bad input" rules of the state machines.
non_integers = st.sampled_from([1.5, "1", None, Decimal(1), Fraction(1, 2), 1j, [1], b"", object()])


def a_fresh_writer_admits_what_is_left(url: str, name: str, limit: int) -> None:
    """After a lost reply: a fresh writer of limiter ``name`` admits hits
    until refused; together with what is held it never exceeds ``limit``,
    and every unit is accounted for (admitted now or held by the lost
    lease)."""
    import tallies

    admitted = 0
    with tallies.open(url) as again:
        lim = again.limiter(name, limit, 60)
        while lim.hit("k"):
            admitted += 1
        held = limit - lim.remaining("k")
    print(f"\nafter the lost reply another writer admitted {admitted}; {held} in use")
    assert admitted <= limit and held == limit
