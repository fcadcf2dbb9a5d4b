"""``store_url``: a fresh URL of each store in ``_contract.STORES``, destroyed after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _contract import STORES, destroy


@pytest.fixture(params=list(STORES))
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = STORES[request.param](request)
    yield url
    destroy(url)
