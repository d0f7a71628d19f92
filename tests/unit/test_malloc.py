"""glibc malloc tuning for the data plane (page faults per burst)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_what_start_up_freed_goes_back_to_the_kernel() -> None:
    """With the thresholds set, freed memory stays resident until release_free_memory."""
    code = """
from ipsecd.daemon import malloc

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

assert malloc.keep_heap_mapped()
blocks = [bytes(4000) for _ in range(8000)]  # 32 MB from malloc (over pymalloc's 512 B)
keep = bytes(100)  # something allocated after them: the heap's top is not free
del blocks
freed = rss_kb()
print(malloc.release_free_memory(), (freed - rss_kb()) // 1024)
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    released, mb = done.stdout.split()
    assert released == "True"
    assert int(mb) >= 24


def test_a_libc_without_malloc_trim_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*_args: object, **_kwargs: object) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(malloc.ctypes, "CDLL", no_libc)
    assert malloc.release_free_memory() is False
