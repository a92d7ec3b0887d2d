"""allocator.release: glibc's malloc_trim where there is one, nothing elsewhere."""

from __future__ import annotations

import ctypes
import platform

import pytest

from lsq import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_trims() -> None:
    allocator._malloc_trim.cache_clear()
    assert allocator._malloc_trim() is not None
    allocator.release()


def test_without_malloc_trim_release_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: object) -> None:
        raise OSError("no C library")

    allocator._malloc_trim.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    try:
        assert allocator._malloc_trim() is None
        allocator.release()
    finally:
        allocator._malloc_trim.cache_clear()
