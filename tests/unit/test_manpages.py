"""Man pages and bash completion are generated from the parsers and the config tables.

They cannot drift from the code (nothing is written twice), but a page can still miss a
description: every config key needs one line in ``ipsecd.cli.manpages.CONFIG_DOCS``.
The pages must also be valid roff (``groff -ww`` prints no warning).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ipsecd.cli import completion, manpages
from ipsecd.cli import ipsecctl as ipsecctl_cli
from ipsecd.cli import ipsecd as ipsecd_cli


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return manpages.pages()


def _plain(roff_text: str) -> str:
    """Roff source with the escapes this generator uses undone, for substring checks."""
    for escape in ("\\fB", "\\fI", "\\fR", "\\&"):
        roff_text = roff_text.replace(escape, "")
    return roff_text.replace("\\-", "-").replace("\\e", "\\")


def test_pages_are_the_three_promised(pages: dict[str, str]) -> None:
    assert set(pages) == {"man8/ipsecd.8", "man8/ipsecctl.8", "man5/ipsecd.yaml.5"}
    assert pages["man8/ipsecd.8"].startswith(".TH IPSECD 8 ")
    assert pages["man5/ipsecd.yaml.5"].startswith(".TH IPSECD.YAML 5 ")


@pytest.mark.parametrize("command", ["ipsecd", "ipsecctl"])
def test_every_subcommand_and_option_is_documented(pages: dict[str, str], command: str) -> None:
    parser = manpages.command_parsers()[command]
    text = _plain(pages[f"man8/{command}.8"])
    subs = manpages.subcommands(parser)
    assert subs, "no subcommands found: did main() stop building its parser?"
    for action in manpages.options(parser):
        for flag in action.option_strings:
            assert flag in text, flag
    for name, _help, sub in subs:
        assert f".SS {name}\n" in text, name
        for action in manpages.options(sub):
            for flag in action.option_strings:
                assert flag in text, f"{name} {flag}"
            for choice in action.choices or ():
                assert str(choice) in text, f"{name} {choice}"
    assert "--version" in text


def test_every_config_key_is_described(pages: dict[str, str]) -> None:
    keys = manpages.config_keys()
    paths = {k.path for k in keys}
    assert {"gateway.listen", "peers.auth.psk_file", "peers.esp.proposals"} <= paths
    undocumented = sorted(paths - manpages.CONFIG_DOCS.keys())
    assert not undocumented, (
        "config keys without a line in ipsecd/cli/manpages.py CONFIG_DOCS: "
        + ", ".join(undocumented)
    )
    text = _plain(pages["man5/ipsecd.yaml.5"])
    for key in keys:
        assert f"\n{key.path}" in text, key.path
    assert "default: ipsec0" in text  # defaults come from the field table


@pytest.mark.parametrize("name", ["man8/ipsecd.8", "man8/ipsecctl.8", "man5/ipsecd.yaml.5"])
def test_groff_renders_without_warnings(pages: dict[str, str], name: str) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff not installed (groff-base; scripts/setup-dev.sh installs it)")
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z"],
        input=pages[name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_write_pages(tmp_path: Path) -> None:
    assert manpages.main(["--output", str(tmp_path)]) == 0
    page = tmp_path / "man8" / "ipsecctl.8"
    assert page.read_text().startswith(".TH IPSECCTL 8")
    assert oct(page.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("main", [ipsecd_cli.main, ipsecctl_cli.main])
def test_version(main: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])  # type: ignore[operator]
    assert exited.value.code == 0
    prog, version = capsys.readouterr().out.split()
    assert prog in ("ipsecd", "ipsecctl")
    assert version == manpages.version() and version[0].isdigit()


def _complete(script: Path, *words: str) -> list[str]:
    """What bash completion offers for the command line ``words`` (the last one being typed)."""
    bash = f"""
source {script}
COMP_WORDS=({" ".join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
fn=$(complete -p {words[0]} | awk '{{print $3}}')
$fn
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run(["bash", "-c", bash], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "ipsecd"
    script.write_text(completion.script())
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    names = [n for n, _, _ in manpages.subcommands(manpages.command_parsers()["ipsecctl"])]
    assert set(names) <= set(_complete(script, "ipsecctl", ""))
    assert _complete(script, "ipsecctl", "log-level", "d") == ["debug"]
    assert "--ike" in _complete(script, "ipsecctl", "rekey", "--")
    assert _complete(script, "ipsecd", "run", "--con") == ["--config"]
    assert "--version" in _complete(script, "ipsecd", "--")
