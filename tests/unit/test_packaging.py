"""pyproject metadata, the install scripts and the unit files agree with each other."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.netns.test_debian_install import lower_bound_constraints

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_license_is_an_spdx_expression_with_its_file() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_every_dependency_has_a_tested_lower_bound() -> None:
    """tests/netns/test_debian_install.py installs exactly these pins and runs the demo."""
    pins = dict(line.split("==") for line in lower_bound_constraints().split())
    assert set(pins) == {re.split(r"[<>=!~ ]", d)[0] for d in PROJECT["dependencies"]}
    # 0.7.x and 0.8.x import, but lack AsyncIPRoute: ImportError at daemon start.
    assert tuple(int(p) for p in pins["pyroute2"].split(".")) >= (0, 9, 1)


@pytest.mark.parametrize("script", ["scripts/install.sh", "scripts/setup-dev.sh"])
def test_scripts_parse(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(REPO / script)], timeout=30).returncode == 0


def test_units_run_the_command_install_sh_links() -> None:
    install = (REPO / "scripts/install.sh").read_text()
    sbin = re.search(r"^SBIN=(\S+)$", install, re.M)
    unitdir = re.search(r"^UNITDIR=(\S+)$", install, re.M)
    assert sbin and unitdir
    assert unitdir.group(1) == "/usr/local/lib/systemd/system"  # in systemd's search path
    for unit in ("ipsecd.service", "ipsecd@.service"):
        text = (REPO / "systemd" / unit).read_text()
        assert f"\nExecStart={sbin.group(1)}/ipsecd run " in text, unit
        assert f"\nExecStartPre={sbin.group(1)}/ipsecd check " in text, unit


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run reads the test command from README.md: there must be exactly one."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S)
    suite = re.compile(r"(sudo )?[^ ]*python3? -m pytest -q")
    commands = {line for block in blocks for line in block.splitlines() if suite.fullmatch(line)}
    assert len(commands) == 1, commands
    assert "README.md" in (REPO / ".ci/run").read_text()


def test_install_creates_the_account_the_units_run_as() -> None:
    install = (REPO / "scripts/install.sh").read_text()
    for unit in ("ipsecd.service", "ipsecd@.service"):
        text = (REPO / "systemd" / unit).read_text()
        user = re.search(r"^User=(\S+)$", text, re.M)
        assert user, unit
        assert f"getent passwd {user.group(1)}" in install
        assert re.search(rf"useradd --system [^\n]*\n?[^\n]* {user.group(1)}\n", install)
