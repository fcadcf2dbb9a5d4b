"""TALLIES_SHM_DIR: an odd value is a clear StoreError naming the directory; a relative
one is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _shm_support import new_url

import tallies
from tallies.stores import StoreUnavailableError


def _open_with_dir(value: str) -> BaseException | None:
    old = os.environ.get("TALLIES_SHM_DIR")
    os.environ["TALLIES_SHM_DIR"] = value
    try:
        tallies.open(new_url()).close()
    except BaseException as exc:
        return exc
    finally:
        assert old is not None
        os.environ["TALLIES_SHM_DIR"] = old
    return None


def test_an_odd_shm_dir_is_a_store_error_naming_the_directory(tmp_path: Path) -> None:
    """Before: a raw FileNotFoundError naming an internal temp file."""
    missing = str(tmp_path / "nope")
    exc = _open_with_dir(missing)
    assert isinstance(exc, StoreUnavailableError), exc
    assert str(exc) == f"TALLIES_SHM_DIR={missing!r} does not exist"
    a_file = tmp_path / "file"
    a_file.write_text("")
    exc = _open_with_dir(str(a_file))
    assert isinstance(exc, StoreUnavailableError) and "is not a directory" in str(exc)
    assert ".tmp" not in str(exc)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        exc = _open_with_dir(str(locked))
        assert isinstance(exc, StoreUnavailableError), exc
        assert f"cannot create a segment in {locked}: Permission denied" in str(exc)
        assert ".tmp" not in str(exc)


def test_a_relative_shm_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative TALLIES_SHM_DIR would depend on each process's working directory:
    refused, naming it (before: used as is, silently per process)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "segs").mkdir()
    exc = _open_with_dir("segs")
    assert isinstance(exc, StoreUnavailableError)
    assert str(exc).startswith("TALLIES_SHM_DIR='segs' is a relative path")
    assert list((tmp_path / "segs").iterdir()) == []
