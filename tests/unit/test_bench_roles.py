"""bench.py's CPU per GB by role (encrypting / decrypting gateway, both directions) and
scale.py's ratios ipsecd / strongSwan taken within each round (the runs are in tests/netns)."""

from __future__ import annotations

from typing import Any

from bench.bench import Result, Run, figures_of
from bench.scale import swan_conf, swan_conn, table


def run(streams: int, reverse: bool, gbps: float, cpu: list[float]) -> Run:
    return Run(streams, gbps, 0, 10**9, sum(cpu), [], reverse=reverse, cpu_gateways=cpu)


def test_cpu_per_gb_is_split_by_the_role_each_gateway_had() -> None:
    res = Result("ipsecd", has_daemons=True)
    res.runs = {1: run(1, False, 1.0, [3.0, 1.0])}  # hostA -> hostB: gwA encrypts
    res.reverse_runs = {1: run(1, True, 0.5, [1.0, 2.0])}  # hostB -> hostA: gwB encrypts
    fig = figures_of({"ipsecd": res})["ipsecd"]
    assert (fig["tcp1_gbps"], fig["tcp1_rev_gbps"], fig["tcp4_rev_gbps"]) == (1.0, 0.5, None)
    assert fig["cpu_s_per_gb"] == 3.5  # 7 CPU seconds over 2 GB
    assert fig["cpu_enc_s_per_gb"] == 2.5  # gwA's 3 s forward + gwB's 2 s reverse
    assert fig["cpu_dec_s_per_gb"] == 1.0


def test_plain_routing_has_no_cpu_per_gb() -> None:
    res = Result("plain")
    res.runs = {1: run(1, False, 9.0, [])}
    fig = figures_of({"plain": res})["plain"]
    assert fig["cpu_s_per_gb"] is None and fig["cpu_enc_s_per_gb"] is None


def shake(per_second: float) -> dict[str, Any]:
    return {
        "tunnels": 250,
        "up": 250,
        "load": [0.5, 0.5],
        "seconds": 250 / per_second,
        "per_second": per_second,
        "cpu_ms_initiator": 1.0,
        "cpu_ms_responder": 1.0,
        "retransmits": 0,
    }


def test_scale_ratios_are_taken_within_each_round() -> None:
    shakes = {
        "ipsecd": {250: [shake(100), shake(400), shake(300)]},
        "strongswan": {250: [shake(200), shake(400), shake(1000)]},
    }
    text = table({}, shakes)
    ratio = next(line for line in text.splitlines() if "ipsecd/5.9.8" in line)
    # rounds: 0.5, 1.0, 0.3 -> median 0.5 (the ratio of the medians would be 0.75)
    assert "0.50x (0.30-1.00)" in ratio
    incomplete = {**shake(100), "up": 200}
    del incomplete["per_second"]
    shakes["ipsecd"][250][0] = incomplete
    assert "incomplete rounds: 200 of 250 up" in table({}, shakes)


def test_swanctl_conf_has_every_connection_and_one_secret() -> None:
    conns = [
        swan_conn(f"p{i}", "%any", "%any", ("@b", f"@a{i}"), ("10.2/32", "10.1/32"))
        for i in range(3)
    ]
    text = swan_conf(conns)
    assert text.count("version = 2") == 3 and text.count("secret = ") == 1
    assert text.count("{") == text.count("}")
