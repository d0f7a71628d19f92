"""glibc malloc tuning for the data plane (page faults per burst)."""

from __future__ import annotations

import platform

import pytest

from ipsecd.daemon import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds() -> None:
    assert malloc.keep_heap_mapped() is True


def test_a_libc_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*_args: object, **_kwargs: object) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(malloc.ctypes, "CDLL", no_libc)
    assert malloc.keep_heap_mapped() is False
