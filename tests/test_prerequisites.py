"""The one rule for a missing prerequisite (tests/_support.py ``unavailable``):
a test skips on a bare pytest run, and fails where CI requires the prerequisite."""

from __future__ import annotations

import pytest
from _support import unavailable


def test_a_missing_prerequisite_skips_where_nothing_requires_it() -> None:
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        unavailable("no widget", required=False)


def test_a_missing_prerequisite_fails_where_ci_requires_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="no widget, and CI requires it"):
        unavailable("no widget", required=True, by="CI")
