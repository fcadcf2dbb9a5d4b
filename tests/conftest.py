"""Shared fixtures: the shm:// segment fixture lives in _shm_support."""

from _shm_support import shm_url  # noqa: F401 - a fixture
