"""The status and metrics contract against running daemons, through rekeys (issue 13).

Two ipsecd daemons in namespaces carry traffic; gwA serves metrics.  Before and after
``ipsecctl rekey b`` and ``ipsecctl rekey b --ike``: every ``status --json`` document
validates against docs/status.schema.json, every ``_total`` metric is at least what it
was (per-peer counters are kept across CHILD_SA and IKE SA rekeys), promtool accepts
the scrape, and ``ipsecctl status`` / ``ipsecctl conns`` print the identities.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.daemons import REPO, IpsecdProcess, site_specs, start_psk_pair
from tests.lab.topology import HOST_B_IP, Topology
from tests.lab.wait import wait_until

SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())
METRICS_PORT = 9810
Series = tuple[str, frozenset[tuple[str, str]]]


def ipsecctl(daemon: IpsecdProcess, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "ipsecd.cli.ipsecctl", "--socket", str(daemon.socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def checked_status(daemon: IpsecdProcess) -> dict[str, Any]:
    """``ipsecctl status --json``, validated against the schema."""
    doc = json.loads(ipsecctl(daemon, "status", "--json"))
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    return doc


def scrape(topo: Topology, daemon: IpsecdProcess) -> str:
    url = f"http://{daemon.spec.wan_ip}:{METRICS_PORT}/metrics"
    code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
    return topo.run(daemon.spec.ns, sys.executable, "-c", code).stdout


def totals(text: str) -> dict[Series, float]:
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_total"):
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )
    if promtool is None:
        assert not os.environ.get("CI"), "promtool not found: scripts/setup-dev.sh installs it"
        return
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_grown(before: dict[Series, float], after: dict[Series, float], what: str) -> None:
    missing = set(before) - set(after)
    assert not missing, f"{what}: series gone: {sorted(missing)[:5]}"
    shrunk = {k: (v, after[k]) for k, v in before.items() if after[k] < v}
    assert not shrunk, f"{what}: counters went down: {shrunk}"


def traffic(topo: Topology) -> None:
    stats = topo.ping(topo.host_a, HOST_B_IP, count=5, interval=0.05)
    assert stats.loss == 0.0, stats


@pytest.mark.timeout(120)
def test_status_and_metrics_hold_through_rekeys(topology: Topology) -> None:
    a, b = site_specs(topology)
    a.gateway_extra = {"metrics": f"{a.wan_ip}:{METRICS_PORT}"}
    gw_a, gw_b = start_psk_pair(topology, a, b)
    gw_a.wait_up()
    traffic(topology)
    first = checked_status(gw_a)
    checked_status(gw_b)
    (peer,) = first["peers"]
    assert peer["state"] == "established" and peer["transfer"]["packets_out"] >= 5
    (child,) = peer["children"]
    assert child["last_out_seconds"] is not None and child["expires_at"] is not None
    text = ipsecctl(gw_a, "status")
    rows = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    assert rows["identities"] == f"{a.wan_ip} <-> {b.wan_ip}" and "transfer" in rows, text
    conns = ipsecctl(gw_a, "conns")
    rows = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in conns.splitlines())
    }
    assert rows["ike"] == "aes256gcm16-prfsha256-x25519" and rows["esp"] == "aes256gcm16", conns
    scrapes = [scrape(topology, gw_a)]
    promtool_check(scrapes[0])

    ipsecctl(gw_a, "rekey", "b")
    wait_until(
        lambda: [c["spi_in"] for c in gw_a.peer_status()["children"]],
        15,
        what="gwA's CHILD_SA replaced",
        until=lambda spis: len(spis) == 1 and spis != [child["spi_in"]],
    )
    traffic(topology)
    after_child = checked_status(gw_a)
    assert after_child["ike_counters"]["child_sa_rekeyed"] >= 1
    scrapes.append(scrape(topology, gw_a))
    assert_grown(totals(scrapes[0]), totals(scrapes[1]), "after rekey")

    ike_spi = after_child["peers"][0]["ike"]["local_spi"]
    ipsecctl(gw_a, "rekey", "b", "--ike")
    wait_until(
        gw_a.peer_status,
        15,
        what="gwA's IKE SA replaced",
        until=lambda p: p["ike_sas"] == 1 and p["ike"] and p["ike"]["local_spi"] != ike_spi,
    )
    traffic(topology)
    after_ike = checked_status(gw_a)
    checked_status(gw_b)
    assert after_ike["ike_counters"]["ike_sa_rekeyed"] >= 1
    assert after_ike["peers"][0]["state"] == "established"
    scrapes.append(scrape(topology, gw_a))
    assert_grown(totals(scrapes[1]), totals(scrapes[2]), "after rekey --ike")
    promtool_check(scrapes[2])
    out = ("ipsecd_peer_packets_total", frozenset({("peer", "b"), ("direction", "out")}))
    assert totals(scrapes[2])[out] >= after_ike["peers"][0]["transfer"]["packets_out"]
    assert totals(scrapes[2])[out] >= 15  # three pings of five, none forgotten at a rekey
