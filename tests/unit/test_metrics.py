"""ipsecd.daemon.metrics: Prometheus text format 0.0.4 from the status document, and its scrape.

Exact lines are checked against a hand-built status document; the HTTP endpoint is
started on an ephemeral port and scraped with urllib and raw sockets.  No
pytest-asyncio: each async scenario runs under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.daemon.core import DaemonCore
from ipsecd.daemon.metrics import (
    CONTENT_TYPE,
    MAX_REQUEST,
    MetricsServer,
    escape_label_value,
    format_value,
    render_metrics,
)
from ipsecd.daemon.status import ChildStatus, DaemonStatus, DataplaneStatus, PeerStatus
from ipsecd.esp.sa import OutboundEspSa
from tests.lab.packets import ipv4
from tests.unit.test_config_support import KEY_IN, parse, write_keys

LOCAL, REMOTE = ("192.0.2.1", 4500), ("192.0.2.2", 4500)
MANUAL = """\
gateway:
  listen: [192.0.2.1]
  mtu: 1400
peers:
  - name: site-b
    remote_address: 192.0.2.2
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
    manual:
      algorithm: aes128gcm16
      spi_in: 0x00001001
      spi_out: 0x00001002
      key_file: b.keys
"""


def _status(**changes: Any) -> DaemonStatus:
    """A status model as the core builds it (two peers, one with two SAs up)."""
    status = DaemonStatus(
        tun="ipsec0",
        mtu=1400,
        uptime_seconds=12.5,
        listen=("192.0.2.1:4500", "192.0.2.1:500"),
        peers=(
            PeerStatus(
                name="site-b",
                mode="ike",
                state="established",
                up=True,
                remote="192.0.2.2:4500",
                local="192.0.2.1",
                local_ts="10.1.0.0/24",
                remote_ts="10.2.0.0/24",
                children=(
                    ChildStatus(
                        spi_in="c0000001",
                        spi_out="d0000002",
                        algorithm="aes256gcm16",
                        packets_in=3,
                        bytes_in=300,
                        packets_out=4,
                        bytes_out=400,
                        drops={"replay": 2, "bad_icv": 1},
                        established_seconds=5.0,
                    ),
                    ChildStatus(
                        spi_in="c0000003",
                        spi_out="d0000004",
                        algorithm="aes256gcm16",
                        packets_in=10,
                        bytes_in=1000,
                        packets_out=20,
                        bytes_out=2000,
                        drops={"replay": 5},
                        established_seconds=1.5,
                    ),
                ),
            ),
            PeerStatus(name="site-c", state="connecting", last_error="no proposal chosen"),
        ),
        drops={"no_sa": 7, "unknown_spi": 1},
        counters={"negotiation_failed": 2, "child_sa_installed": 3, "child_sa_rekeyed": 1},
        ike_counters={"retransmits": 4, "ike_sa_rekeyed": 2},
    )
    return replace(status, **changes)


def _lines(text: str) -> list[str]:
    return text.splitlines()


# -- rendering -------------------------------------------------------------------------------
def test_tunnel_up_gauge_per_peer() -> None:
    lines = _lines(render_metrics(_status()))
    assert "# TYPE ipsecd_tunnel_up gauge" in lines
    assert 'ipsecd_tunnel_up{peer="site-b"} 1' in lines
    assert 'ipsecd_tunnel_up{peer="site-c"} 0' in lines
    assert 'ipsecd_child_sas{peer="site-b"} 2' in lines
    assert 'ipsecd_peer_info{peer="site-c",mode="ike",state="connecting"} 1' in lines


def test_per_peer_packets_and_bytes_sum_the_sas() -> None:
    lines = _lines(render_metrics(_status()))
    assert "# TYPE ipsecd_peer_packets_total counter" in lines
    assert 'ipsecd_peer_packets_total{peer="site-b",direction="in"} 13' in lines
    assert 'ipsecd_peer_packets_total{peer="site-b",direction="out"} 24' in lines
    assert 'ipsecd_peer_bytes_total{peer="site-b",direction="in"} 1300' in lines
    assert 'ipsecd_peer_bytes_total{peer="site-b",direction="out"} 2400' in lines
    # A peer without SAs still reports zeros, so dashboards show it.
    assert 'ipsecd_peer_packets_total{peer="site-c",direction="in"} 0' in lines
    assert 'ipsecd_peer_bytes_total{peer="site-c",direction="out"} 0' in lines


def test_per_sa_series() -> None:
    lines = _lines(render_metrics(_status()))
    sa1 = 'peer="site-b",spi_in="c0000001",spi_out="d0000002"'
    sa2 = 'peer="site-b",spi_in="c0000003",spi_out="d0000004"'
    assert f'ipsecd_sa_packets_total{{{sa1},direction="in"}} 3' in lines
    assert f'ipsecd_sa_packets_total{{{sa1},direction="out"}} 4' in lines
    assert f'ipsecd_sa_bytes_total{{{sa1},direction="in"}} 300' in lines
    assert f'ipsecd_sa_bytes_total{{{sa2},direction="out"}} 2000' in lines
    assert f"ipsecd_sa_established_seconds{{{sa2}}} 1.5" in lines
    assert f'ipsecd_sa_drops_total{{{sa1},reason="bad_icv"}} 1' in lines
    assert f'ipsecd_sa_drops_total{{{sa1},reason="replay"}} 2' in lines
    assert f'ipsecd_sa_drops_total{{{sa2},reason="replay"}} 5' in lines


def test_drops_by_reason() -> None:
    lines = _lines(render_metrics(_status()))
    assert 'ipsecd_peer_drops_total{peer="site-b",reason="replay"} 7' in lines
    assert 'ipsecd_peer_drops_total{peer="site-b",reason="bad_icv"} 1' in lines
    assert "# TYPE ipsecd_drops_total counter" in lines
    assert 'ipsecd_drops_total{reason="no_sa"} 7' in lines
    assert 'ipsecd_drops_total{reason="unknown_spi"} 1' in lines


def test_rekeys_handshake_failures_and_counters() -> None:
    lines = _lines(render_metrics(_status()))
    assert "# TYPE ipsecd_rekeys_total counter" in lines
    assert 'ipsecd_rekeys_total{kind="child"} 1' in lines
    assert 'ipsecd_rekeys_total{kind="ike"} 2' in lines
    assert "# TYPE ipsecd_handshake_failures_total counter" in lines
    assert "ipsecd_handshake_failures_total 2" in lines
    assert 'ipsecd_daemon_events_total{event="child_sa_installed"} 3' in lines
    assert 'ipsecd_ike_events_total{event="retransmits"} 4' in lines


def test_global_gauges() -> None:
    lines = _lines(render_metrics(_status()))
    assert "ipsecd_uptime_seconds 12.5" in lines
    assert "ipsecd_tun_mtu_bytes 1400" in lines


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)\}})? "
    r"(?P<value>-?[0-9.e+]+|NaN|\+Inf|-Inf)$"
)


@pytest.mark.parametrize(
    "status",
    [_status(), DaemonStatus(), DaemonStatus(peers=(), counters={})],
    ids=["full", "empty", "idle"],
)
def test_output_is_well_formed_exposition_format(status: DaemonStatus) -> None:
    """Every line is HELP, TYPE or a sample; families are contiguous; series are unique."""
    text = render_metrics(status)
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    seen_series: set[str] = set()
    finished: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name.startswith("ipsecd_")
            assert name not in declared and name not in finished, f"{name} declared twice"
            if current is not None:
                finished.add(current)
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current
            assert kind in ("counter", "gauge")
            declared[name] = kind
            if kind == "counter":
                assert name.endswith("_total")
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            assert m["name"] == current, f"{line!r} outside its family"
            series = m["name"] + "{" + (m["labels"] or "") + "}"
            assert series not in seen_series, f"duplicate series {series}"
            seen_series.add(series)
    # Every family is documented even when it has no sample yet.
    for name in ("tunnel_up", "sa_packets_total", "rekeys_total", "handshake_failures_total"):
        assert f"ipsecd_{name}" in declared


def test_label_values_are_escaped() -> None:
    status = DaemonStatus(peers=(PeerStatus(name='we"ird\\pe\ner', up=True),))
    lines = _lines(render_metrics(status))
    assert 'ipsecd_tunnel_up{peer="we\\"ird\\\\pe\\ner"} 1' in lines
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_format_value() -> None:
    assert format_value(True) == "1"
    assert format_value(False) == "0"
    assert format_value(7) == "7"
    assert format_value(2.0) == "2"
    assert format_value(0.25) == "0.25"
    assert format_value(float("nan")) == "NaN"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"


def test_renders_what_the_core_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real core with a manual SA that carried traffic: the contract holds."""
    monkeypatch.chdir(tmp_path)
    write_keys(tmp_path / "b.keys")
    config = parse(MANUAL)
    core = DaemonCore(config, 100.0)
    (sa,) = core.sad
    alg = ENCRYPTION["aes128gcm16"]
    peer_out = OutboundEspSa(sa.inbound.spi, alg, None, KEY_IN)  # the peer seals with our in-key
    inner = ipv4("10.2.0.5", "10.1.0.5")
    esp = peer_out.encapsulate(inner, 4)
    core.from_udp([(esp, REMOTE), (esp, REMOTE)], LOCAL, 101.0)  # the second is a replay
    assert core.packets_to_tun() == [inner]
    core.from_tun([ipv4("10.1.0.5", "10.2.0.5"), ipv4("10.1.0.5", "10.9.0.5")], 102.0)
    status = core.status(103.0, tun=None, listen=[LOCAL], dataplane=DataplaneStatus())
    lines = _lines(render_metrics(status))
    sa_labels = 'peer="site-b",spi_in="00001001",spi_out="00001002"'
    assert 'ipsecd_tunnel_up{peer="site-b"} 1' in lines
    assert 'ipsecd_peer_info{peer="site-b",mode="manual",state="manual"} 1' in lines
    assert f'ipsecd_sa_packets_total{{{sa_labels},direction="in"}} 1' in lines
    assert f'ipsecd_sa_packets_total{{{sa_labels},direction="out"}} 1' in lines
    assert f'ipsecd_sa_bytes_total{{{sa_labels},direction="in"}} {len(inner)}' in lines
    assert f'ipsecd_sa_drops_total{{{sa_labels},reason="replay"}} 1' in lines
    assert f"ipsecd_sa_established_seconds{{{sa_labels}}} 3" in lines
    assert 'ipsecd_drops_total{reason="no_sa"} 1' in lines
    assert "ipsecd_uptime_seconds 3" in lines
    assert status.to_dict()["peers"][0]["children"][0]["spi_in"] == "00001001"


# -- the HTTP endpoint -----------------------------------------------------------------------
def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _with_server(
    scenario: Callable[[int], Any], get_status: Callable[[], DaemonStatus] = _status
) -> Any:
    """Start a MetricsServer on port 0; run the blocking ``scenario(port)`` in a thread."""

    async def main() -> Any:
        server = MetricsServer("127.0.0.1", 0, get_status)
        await server.start()
        try:
            [(host, port)] = server.addresses
            assert host == "127.0.0.1" and port > 0
            return await asyncio.to_thread(scenario, port)
        finally:
            await server.close()

    return asyncio.run(main())


def test_scrape_with_urllib() -> None:
    def scrape(port: int) -> tuple[int, str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()

    code, ctype, body = _with_server(scrape)
    assert code == 200
    assert ctype == CONTENT_TYPE
    assert body == render_metrics(_status())
    assert 'ipsecd_tunnel_up{peer="site-b"} 1' in body.splitlines()


def test_each_scrape_reads_a_fresh_status() -> None:
    calls = {"n": 0}

    def get_status() -> DaemonStatus:
        calls["n"] += 1
        return DaemonStatus(counters={"negotiation_failed": calls["n"]})

    def scrape_twice(port: int) -> list[bytes]:
        return [_raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(2)]

    first, second = _with_server(scrape_twice, get_status)
    assert b"\nipsecd_handshake_failures_total 1\n" in first
    assert b"\nipsecd_handshake_failures_total 2\n" in second


def test_raw_get_closes_after_one_answer() -> None:
    answer = _with_server(lambda port: _raw(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.decode() == render_metrics(_status())


def test_head_has_no_body() -> None:
    answer = _with_server(lambda port: _raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert body == b""


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 404 Not Found"),
        (b"GET /metricsx HTTP/1.0\r\n\r\n", b"HTTP/1.0 404 Not Found"),
        (b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.0 404 Not Found"),
        (
            b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 405 Method Not Allowed",
        ),
        (b"garbage\r\n\r\n", b"HTTP/1.0 400 Bad Request"),
        (b"GET /metrics\r\n", b"HTTP/1.0 200 OK"),  # HTTP/0.9-style line, then EOF
    ],
    ids=["root", "prefix", "other", "post", "garbage", "no-version"],
)
def test_other_requests(request_bytes: bytes, status_line: bytes) -> None:
    def run(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request_bytes)
            sock.shutdown(socket.SHUT_WR)  # a client that stops sending still gets an answer
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    assert _with_server(run).startswith(status_line)


def test_urllib_404() -> None:
    def scrape(port: int) -> int:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    assert _with_server(scrape) == 404


def test_oversized_request_is_refused() -> None:
    big = b"GET /metrics HTTP/1.0\r\nX-Pad: " + b"a" * (4 * MAX_REQUEST) + b"\r\n\r\n"

    def run(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with contextlib.suppress(OSError):  # the server may close before reading it all
                sock.sendall(big)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        return data

    answer = _with_server(run)
    assert answer == b"" or answer.startswith(b"HTTP/1.0 431 ")


def test_broken_status_gives_500_and_server_survives() -> None:
    state = {"fail": True}

    def get_status() -> DaemonStatus:
        if state["fail"]:
            raise RuntimeError("boom")
        return _status()

    def run(port: int) -> tuple[bytes, bytes]:
        first = _raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        state["fail"] = False
        return first, _raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")

    first, second = _with_server(run, get_status)
    assert first.startswith(b"HTTP/1.0 500 ")
    assert second.startswith(b"HTTP/1.0 200 OK")


def test_close_releases_the_port_and_idle_clients() -> None:
    async def main() -> int:
        server = MetricsServer("127.0.0.1", 0, _status)
        await server.start()
        [(_, port)] = server.addresses
        # An idle client that never sends its request must not hold close() up.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        await asyncio.wait_for(server.close(), 2)
        writer.close()
        assert server.addresses == []
        return port

    port = asyncio.run(main())
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # free again


def test_peer_last_seen_gauge() -> None:
    seen = {"dpd": "idle", "dpd_delay": 30, "last_seen_seconds": 4.5}
    status = _status()
    status = replace(status, peers=(replace(status.peers[0], ike=seen), *status.peers[1:]))
    lines = _lines(render_metrics(status))
    assert 'ipsecd_peer_last_seen_seconds{peer="site-b"} 4.5' in lines
    assert not any(
        line.startswith("ipsecd_peer_last_seen_seconds{")
        for line in _lines(render_metrics(_status()))
    )


def test_ike_dos_gauges() -> None:
    status = _status(
        ike_dos={"half_open": 7, "cookies_required": True, "cookie_threshold": 5},
        ike_counters={"cookies_sent": 12},
    )
    lines = _lines(render_metrics(status))
    assert "ipsecd_ike_half_open_sas 7" in lines
    assert "ipsecd_ike_cookies_required 1" in lines
    assert 'ipsecd_ike_events_total{event="cookies_sent"} 12' in lines
    assert "ipsecd_ike_half_open_sas 7" not in _lines(render_metrics(_status()))
