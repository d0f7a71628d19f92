"""vagrant/provision.sh, the config part: run against a temporary root without systemd or apt.

The namespace stand-in for the two VMs (tests/netns) starts daemons from what this
writes; here only the files are checked: both configs load, both gateways hold the
same PSK in a private file, and a bad role or template is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ipsecd.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "vagrant" / "provision.sh"
# The Vagrantfile's addresses (test_vagrantfile_addresses reads them from there).
ADDRESSES = {
    "left": ["--wan", "192.0.2.10", "--peer-wan", "192.0.2.20", "--site-addr", "10.1.0.10"],
    "right": ["--wan", "192.0.2.20", "--peer-wan", "192.0.2.10", "--site-addr", "10.2.0.10"],
}


def _provision(
    role: str,
    root: Path,
    psk_source: Path,
    src: Path = REPO,
    addresses: list[str] | None = None,
    **extra_env: str,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **extra_env,
        "IPSECD_NO_INSTALL": "1",
        "IPSECD_NO_SYSTEMD": "1",
        "IPSECD_PSK_SOURCE": str(psk_source),
        "IPSECD_SRC": str(src),
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--root",
            str(root),
            *(ADDRESSES.get(role, ADDRESSES["left"]) if addresses is None else addresses),
            role,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _paths(stdout: str) -> dict[str, Path]:
    return {k: Path(v.strip()) for k, _, v in (line.partition(":") for line in stdout.splitlines())}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_both_roles_write_loadable_configs_with_one_psk(tmp_path: Path) -> None:
    shared = tmp_path / "shared.psk"
    left = _provision("left", tmp_path / "left", shared)
    assert left.returncode == 0, left.stderr
    right = _provision("right", tmp_path / "right", shared)
    assert right.returncode == 0, right.stderr

    lp, rp = _paths(left.stdout), _paths(right.stdout)
    assert lp["config"] == tmp_path / "left/etc/ipsecd/ipsecd.yaml"
    assert lp["control_socket"] == tmp_path / "left/run/ipsecd/ipsecd.sock"

    assert shared.read_text().startswith("0s") and _mode(shared) == 0o600
    for paths in (lp, rp):
        assert paths["psk"].read_bytes() == shared.read_bytes()
        assert _mode(paths["psk"]) == 0o600
        assert _mode(paths["config"].parent) == 0o755  # the key file alone is private

    lc, rc = load_config(lp["config"]), load_config(rp["config"])
    assert lc.peers[0].auth.psk == rc.peers[0].auth.psk
    assert len(lc.peers[0].auth.psk) == 32  # 0s = base64 of 32 random bytes
    assert lc.gateway.control_socket == lp["control_socket"]
    assert rc.gateway.control_socket == rp["control_socket"]
    assert [str(a) for a in lc.gateway.listen] == ["192.0.2.10"]
    assert [str(a) for a in rc.gateway.listen] == ["192.0.2.20"]
    assert [str(a) for a in lc.gateway.addresses] == ["10.1.0.10/32"]
    assert (lc.peers[0].name, rc.peers[0].name) == ("right", "left")
    assert str(lc.peers[0].remote_address) == "192.0.2.20"
    assert str(rc.peers[0].remote_address) == "192.0.2.10"
    assert lc.peers[0].local_ts == rc.peers[0].remote_ts
    assert lc.peers[0].remote_ts == rc.peers[0].local_ts
    assert (lc.peers[0].start, rc.peers[0].start) == ("initiate", "respond")
    assert lc.gateway.metrics == ("127.0.0.1", 9810)
    # No systemd step: nothing outside the config and run directories.
    assert not (tmp_path / "left/etc/systemd").exists()


def _provision_cert(role: str, root: Path, ca_dir: Path) -> subprocess.CompletedProcess[str]:
    """provision.sh --auth cert with the CA in ``ca_dir``; ``ipsecd pki`` from this tree."""
    return _provision(
        role,
        root,
        root / "unused.psk",
        IPSECD_AUTH="cert",
        IPSECD_CA_DIR=str(ca_dir),
        PYTHONPATH=str(REPO),
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    )


def test_cert_auth_one_ca_private_keys_loadable_configs(tmp_path: Path) -> None:
    ca_dir = tmp_path / "pki"
    results = {role: _provision_cert(role, tmp_path / role, ca_dir) for role in ("left", "right")}
    for result in results.values():
        assert result.returncode == 0, result.stderr
    assert results["left"].stderr.count("made CA") == 1  # left made it, right used it
    assert "made CA" not in results["right"].stderr
    assert _mode(ca_dir) == 0o700 and _mode(ca_dir / "ca.key") == 0o600
    configs = {}
    for role, result in results.items():
        paths = _paths(result.stdout)
        assert "psk" not in paths and not (tmp_path / role / "unused.psk").exists()
        assert _mode(paths["private_key"]) == 0o600 and _mode(paths["private_key"].parent) == 0o700
        assert _mode(paths["certificate"]) == 0o644
        assert paths["cacert"].read_bytes() == (ca_dir / "ca.pem").read_bytes()
        configs[role] = load_config(paths["config"])  # certificate, key and CA check out
        auth = configs[role].peers[0].auth
        assert (auth.local_auth, auth.remote_auth) == ("pubkey", "pubkey") and not auth.psk
    # Identities default to the addresses: each certificate carries its gateway's WAN address.
    assert str(configs["left"].peers[0].auth.local_id) == "192.0.2.10"
    # A second run keeps the gateway's key and issues it a fresh certificate.
    key = (tmp_path / "left/etc/ipsecd/private/left.key").read_bytes()
    again = _provision_cert("left", tmp_path / "left", ca_dir)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "left/etc/ipsecd/private/left.key").read_bytes() == key
    # A CA key that others can read is refused, saying which file and what to do.
    (ca_dir / "ca.key").chmod(0o644)
    refused = _provision_cert("right", tmp_path / "right", ca_dir)
    assert refused.returncode != 0 and "ca.key is mode 644" in refused.stderr


def test_unknown_auth_is_refused(tmp_path: Path) -> None:
    result = _provision("left", tmp_path / "left", tmp_path / "x.psk", IPSECD_AUTH="x509")
    assert result.returncode != 0 and "--auth: psk or cert, not 'x509'" in result.stderr


def test_existing_psk_is_kept_and_reprovision_is_idempotent(tmp_path: Path) -> None:
    shared = tmp_path / "shared.psk"
    shared.write_text("0sAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    shared.chmod(0o600)
    for _ in range(2):
        result = _provision("left", tmp_path / "left", shared)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "left/etc/ipsecd/psk.secret").read_bytes() == shared.read_bytes()


def test_unknown_role_is_refused(tmp_path: Path) -> None:
    result = _provision("middle", tmp_path / "x", tmp_path / "shared.psk")
    assert result.returncode != 0
    assert "no template for role 'middle'" in result.stderr
    assert "left" in result.stderr and "right" in result.stderr
    assert not (tmp_path / "x").exists()


def test_invalid_template_keeps_the_previous_config(tmp_path: Path) -> None:
    """A template that fails `ipsecd check` is refused; the running config file stays."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "vagrant", src / "vagrant")
    shutil.copytree(REPO / "ipsecd", src / "ipsecd")
    shared = tmp_path / "shared.psk"
    ok = _provision("left", tmp_path / "left", shared, src=src)
    assert ok.returncode == 0, ok.stderr
    config = tmp_path / "left/etc/ipsecd/ipsecd.yaml"
    before = config.read_text()
    template = src / "vagrant/templates/left.yaml"
    template.write_text(template.read_text().replace("start: initiate", "start: sometimes"))
    bad = _provision("left", tmp_path / "left", shared, src=src)
    assert bad.returncode != 0
    assert "does not validate" in bad.stderr
    assert "sometimes" in bad.stderr  # the loader's message reaches the operator
    assert config.read_text() == before
    assert not config.with_suffix(".yaml.new").exists()


@pytest.mark.parametrize("role", ["left", "right"])
def test_templates_have_only_known_placeholders(role: str) -> None:
    text = (REPO / "vagrant" / "templates" / f"{role}.yaml").read_text()
    assert set(re.findall(r"@[A-Z_]+@", text)) == {
        "@ETC_DIR@",
        "@RUN_DIR@",
        "@WAN_ADDR@",
        "@PEER_WAN_ADDR@",
        "@SITE_ADDR@",
        "@AUTH@",
    }


def test_missing_address_is_refused(tmp_path: Path) -> None:
    result = _provision("left", tmp_path / "x", tmp_path / "shared.psk", addresses=[])
    assert result.returncode != 0
    assert "--wan ADDR missing" in result.stderr
    bad = _provision(
        "left",
        tmp_path / "x",
        tmp_path / "shared.psk",
        addresses=["--wan", "192.0.2.10", "--peer-wan", "x;rm", "--site-addr", "10.1.0.10"],
    )
    assert bad.returncode != 0 and "not an IP address: x;rm" in bad.stderr


def _vagrant_gateways() -> dict[str, dict[str, str]]:
    """GATEWAYS from the Vagrantfile: name -> {internet:, site:, peer:, ...}."""
    text = (REPO / "Vagrantfile").read_text()
    table = text[text.index("GATEWAYS = {") : text.index("}.freeze")]
    gateways = {}
    for name, body in re.findall(r'"(\w+)"\s*=>\s*\{([^}]*)\}', table):
        gateways[name] = dict(re.findall(r'(\w+):\s*"([^"]*)"', body))
    return gateways


def test_vagrantfile_addresses() -> None:
    """No VM takes a network's .1 (the provider's host side: vagrant-libvirt's bridge,
    VirtualBox's host-only adapter), and provision.sh gets the same addresses this test uses."""
    gateways = _vagrant_gateways()
    assert set(gateways) == {"left", "right"}
    for name, net in gateways.items():
        for key in ("internet", "site"):
            assert not net[key].endswith(".1"), f"{name} {key} {net[key]}"
        peer = gateways[net["peer"]]
        assert ADDRESSES[name] == [
            "--wan",
            net["internet"],
            "--peer-wan",
            peer["internet"],
            "--site-addr",
            net["site"],
        ]
    text = (REPO / "Vagrantfile").read_text()
    assert "--wan #{net[:internet]} --peer-wan #{peer[:internet]} --site-addr #{net[:site]}" in text
    assert "/.vagrant/" in (REPO / ".gitignore").read_text().split()
