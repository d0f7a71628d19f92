"""bench/memory.py's ``--modules``: the imports of a daemon, from its ``-X importtime`` log."""

from __future__ import annotations

from pathlib import Path

from bench.memory import imported


def test_imports_counted_by_top_level_package(tmp_path: Path) -> None:
    log = tmp_path / "idle-1.log"
    log.write_text(
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |   yaml.error\n"
        "import time:       300 |        420 | yaml\n"
        "import time:        40 |         40 |       ipsecd.dataplane.tun\n"
        '{"event": "ipsecd running", "level": "info"}\n'
        "import time:        12 |         12 | asyncio\n"
    )
    assert imported(log) == {"yaml": 2, "ipsecd": 1, "asyncio": 1}
