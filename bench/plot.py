"""Throughput over time (iperf3's per-second intervals) as a PNG, one panel per stream count.

matplotlib is imported only here and only when a plot is asked for (it is in the ``test``
extra, not a dependency of ipsecd).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.figures import BACKENDS, LABELS

#: backend -> streams -> [(seconds since start, Gbit/s)]
Series = Mapping[str, Mapping[int, Sequence[tuple[float, float]]]]

COLOURS = {"plain": "tab:gray", "strongswan": "tab:blue", "ipsecd": "tab:orange"}


def iperf_series(raw: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(interval end in s, Gbit/s summed over streams) for each interval of ``iperf3 -J``."""
    points = []
    for interval in raw.get("intervals") or []:
        total = interval.get("sum") or {}
        if "end" in total and "bits_per_second" in total:
            points.append((float(total["end"]), float(total["bits_per_second"]) / 1e9))
    return points


def write_plot(series: Series, path: str | Path, title: str = "") -> None:
    """Write the PNG: Gbit/s (log scale: plain routing is ~30x the tunnels) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = sorted({s for per_backend in series.values() for s in per_backend})
    fig, axes = plt.subplots(1, max(1, len(streams)), figsize=(5 * max(1, len(streams)), 4))
    axes = list(axes) if len(streams) > 1 else [axes]
    for ax, count in zip(axes, streams, strict=False):
        for name in BACKENDS:
            points = (series.get(name) or {}).get(count) or []
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=".", label=LABELS[name], color=COLOURS[name])
        ax.set_title(f"iperf3 TCP, {count} stream{'s' if count > 1 else ''}")
        ax.set_xlabel("seconds")
        ax.set_ylabel("Gbit/s")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
