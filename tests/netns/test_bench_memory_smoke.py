"""bench/memory.py with its shortest settings: one daemon with one peer, reloaded once.
No figure is judged (the machine is shared), only that each one was measured; what keeps
the benchmark from rotting when the daemon or tests.lab change."""

from __future__ import annotations

from bench import memory


def test_memory_bench_measures_every_figure() -> None:
    results = memory.run([memory.REPO], [1], rounds=1, reload=True)
    assert list(results) == [(str(memory.REPO), 1)]
    (result,) = results[(str(memory.REPO), 1)]
    for key in ("start_s", "rss_mb", "anon_mb", "heap_mb", "arenas_mb", "reload_rss_mb"):
        assert result[key] > 0, key
    assert result["rss_mb"] > result["anon_mb"]  # the libraries are resident too
    assert any("python" in name for name, _ in result["top"])
    assert "RSS after reload" in memory.table(results)
