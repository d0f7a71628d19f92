"""ipsecd.daemon.metrics: the status model as Prometheus metric families, and its scrape.

The families are checked on what a real DaemonCore reports (a manual peer that carried
traffic; a negotiated peer through CHILD_SA and IKE SA rekeys), parsed back with
prometheus_client's own parser; promtool checks the text (it must be installed in CI:
scripts/setup-dev.sh).  The HTTP endpoint is started on an ephemeral port and scraped
with urllib and raw sockets.  No pytest-asyncio: each async scenario runs under
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.daemon.core import DaemonCore
from ipsecd.daemon.metrics import (
    CONTENT_TYPE,
    MAX_REQUEST,
    MetricsServer,
    render_metrics,
    status_families,
)
from ipsecd.daemon.status import (
    DAEMON_EVENTS,
    DROP_REASONS,
    IKE_EVENTS,
    PEER_STATES,
    DaemonStatus,
    DataplaneStatus,
)
from ipsecd.esp.sa import OutboundEspSa
from tests.lab.packets import ipv4
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import ipv4_packet, side_a, side_b
from tests.unit.test_config_support import KEY_IN, parse, write_keys

ROOT = Path(__file__).resolve().parents[2]
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
Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Sample, float]:
    """Every sample of a scrape, by name and labels (prometheus_client's own parser)."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def ipsecd_lines(text: str) -> list[str]:
    """The daemon's own lines (process_* and python_info vary between two scrapes)."""
    return [line for line in text.splitlines() if "ipsecd_" in line]


def core_status(core: DaemonCore, now: float) -> DaemonStatus:
    return core.status(now, wall=1e9, tun="ipsec0", listen=[LOCAL], dataplane=DataplaneStatus())


def _manual_status(directory: Path) -> DaemonStatus:
    """The real core with a manual SA that carried traffic (one replay dropped)."""
    write_keys(directory / "b.keys")
    cwd = os.getcwd()
    os.chdir(directory)  # the key file is relative to it
    try:
        core = DaemonCore(parse(MANUAL), 100.0)
    finally:
        os.chdir(cwd)
    (sa,) = core.sad
    peer_out = OutboundEspSa(sa.inbound.spi, ENCRYPTION["aes128gcm16"], None, KEY_IN)
    inner = ipv4("10.2.0.5", "10.1.0.5")
    esp = peer_out.encapsulate(inner, 4)
    core.from_udp([(esp, REMOTE), (esp, REMOTE)], LOCAL, 101.0)  # the second is a replay
    assert core.packets_to_tun() == [inner]
    core.from_tun([ipv4("10.1.0.5", "10.2.0.5"), ipv4("10.1.0.5", "10.9.0.5")], 102.0)
    return core_status(core, 112.5)


@pytest.fixture
def manual_status(tmp_path: Path) -> DaemonStatus:
    return _manual_status(tmp_path)


@cache
def _status() -> DaemonStatus:
    """A status for the endpoint tests (any real one will do), made once."""
    with tempfile.TemporaryDirectory(prefix="ipsecd-metrics-") as directory:
        return _manual_status(Path(directory))


# -- the families ----------------------------------------------------------------------------
def test_manual_peer_that_carried_traffic(manual_status: DaemonStatus) -> None:
    text = render_metrics(manual_status)
    peer = {"peer": "site-b"}
    assert value(text, "ipsecd_tunnel_up", **peer) == 1
    assert value(text, "ipsecd_child_sas", **peer) == 1
    assert value(text, "ipsecd_peer_state", **peer, state="manual") == 1
    assert value(text, "ipsecd_peer_packets_total", **peer, direction="in") == 1
    assert value(text, "ipsecd_peer_packets_total", **peer, direction="out") == 1
    assert value(text, "ipsecd_peer_bytes_total", **peer, direction="in") == 20
    assert value(text, "ipsecd_peer_drops_total", **peer, reason="replay") == 1
    assert value(text, "ipsecd_drops_total", reason="no_sa") == 1
    assert value(text, "ipsecd_uptime_seconds") == 12.5
    assert value(text, "ipsecd_tun_mtu_bytes") == 1400
    info = {"peer": "site-b", "mode": "manual", "start": "manual", "remote": "192.0.2.2:500"}
    assert value(text, "ipsecd_peer_info", **info) == 1
    sa = {"peer": "site-b", "spi_in": "00001001", "spi_out": "00001002"}
    assert value(text, "ipsecd_child_sa_info", **sa, algorithm="aes128gcm16") == 1


def test_peer_state_is_a_fixed_label_set(manual_status: DaemonStatus) -> None:
    found = {
        dict(labels)["state"]: v
        for (name, labels), v in samples(render_metrics(manual_status)).items()
        if name == "ipsecd_peer_state"
    }
    assert list(found) == list(PEER_STATES) and sum(found.values()) == 1


def test_no_spi_label_outside_the_info_metric(manual_status: DaemonStatus) -> None:
    for (name, labels), _ in samples(render_metrics(manual_status)).items():
        if name != "ipsecd_child_sa_info":
            assert not {"spi_in", "spi_out", "spi"} & {k for k, _ in labels}, name
        assert "state" not in dict(labels) or name == "ipsecd_peer_state", name


def test_every_counter_is_there_from_the_start(tmp_path: Path) -> None:
    """Before the first tunnel: every counter family with every label set, at zero."""
    r = CoreRig(tmp_path, side_a(), side_b())
    r.drop = True
    r.core.control("down", "b", r.now)
    text = render_metrics(core_status(r.core, r.now))
    found = samples(text)
    expected: list[tuple[str, dict[str, str]]] = [
        ("ipsecd_handshake_failures_total", {"peer": "b"}),
        ("ipsecd_rekeys_total", {"kind": "child"}),
        ("ipsecd_rekeys_total", {"kind": "ike"}),
    ]
    for d in ("in", "out"):
        expected += [("ipsecd_peer_packets_total", {"peer": "b", "direction": d})]
        expected += [("ipsecd_peer_bytes_total", {"peer": "b", "direction": d})]
    for reason in DROP_REASONS:
        expected += [("ipsecd_drops_total", {"reason": reason})]
        expected += [("ipsecd_peer_drops_total", {"peer": "b", "reason": reason})]
    expected += [("ipsecd_daemon_events_total", {"event": e}) for e in DAEMON_EVENTS]
    expected += [("ipsecd_ike_events_total", {"event": e}) for e in IKE_EVENTS]
    for name, labels in expected:
        assert (name, frozenset(labels.items())) in found, (name, labels)
    assert value(text, "ipsecd_ike_events_total", event="ike_sa_rekeyed") == 0
    counters = [k for k in found if k[0].endswith("_total") and k[0].startswith("ipsecd_")]
    assert len(counters) >= len(expected)


def test_per_peer_counters_only_grow_across_rekeys(tmp_path: Path) -> None:
    """ipsecd_peer_bytes_total went from 420 to 168 at a CHILD_SA rekey (issue 13): no more."""
    r = CoreRig(tmp_path, side_a(), side_b())
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")] * 5)
    scrapes = [samples(render_metrics(core_status(r.core, r.now)))]
    for ike in (False, True):
        r.core.control("rekey", "b", r.now, rekey_ike=ike)
        r.pump()
        r.advance(2)
        scrapes.append(samples(render_metrics(core_status(r.core, r.now))))
    before, after = scrapes[0], scrapes[-1]
    key = ("ipsecd_peer_packets_total", frozenset({("peer", "b"), ("direction", "out")}))
    assert before[key] == after[key] == 5
    assert after[("ipsecd_rekeys_total", frozenset({("kind", "child")}))] == 1
    assert after[("ipsecd_rekeys_total", frozenset({("kind", "ike")}))] == 1
    for earlier, later in zip(scrapes, scrapes[1:], strict=False):
        for k, v in earlier.items():
            if k[0].startswith("ipsecd_") and k[0].endswith("_total"):
                assert later[k] >= v, k


def test_handshake_failures_carry_the_peer(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b(psk="0x" + "66" * 32))
    r.advance(5)
    text = render_metrics(core_status(r.core, r.now))
    failed = value(text, "ipsecd_handshake_failures_total", peer="b")
    assert failed >= 1
    assert value(text, "ipsecd_daemon_events_total", event="negotiation_failed") == failed
    assert value(text, "ipsecd_peer_state", peer="b", state="established") == 0


def test_process_and_build_info(manual_status: DaemonStatus) -> None:
    found = {name for name, _ in samples(render_metrics(manual_status))}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= found
    assert {"process_start_time_seconds", "process_open_fds", "python_info"} <= found
    (labels,) = [
        dict(k[1]) for k in samples(render_metrics(manual_status)) if k[0] == "ipsecd_build_info"
    ]
    assert set(labels) == {"version", "python"}


def test_ike_dos_gauges(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    text = render_metrics(core_status(r.core, r.now))
    assert value(text, "ipsecd_ike_half_open_sas") == 0
    assert value(text, "ipsecd_ike_cookies_required") == 0
    assert value(text, "ipsecd_peer_last_heard_seconds", peer="b") == 0


def _promtool() -> str | None:
    return shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )


def test_promtool_accepts_the_scrape(manual_status: DaemonStatus, tmp_path: Path) -> None:
    """``promtool check metrics``: format and naming conventions (CI installs promtool)."""
    promtool = _promtool()
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not found: scripts/setup-dev.sh installs it")
        pytest.skip("promtool not installed (scripts/setup-dev.sh installs it)")
    r = CoreRig(tmp_path, side_a(), side_b())
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")])
    for status in (manual_status, core_status(r.core, r.now)):
        proc = subprocess.run(
            [promtool, "check", "metrics"],
            input=render_metrics(status),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_operating_md_lists_every_family(manual_status: DaemonStatus) -> None:
    doc = (ROOT / "docs" / "operating.md").read_text()
    section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(ipsecd_[a-z_]+)`", section))
    suffix = {"counter": "_total", "info": "_info"}
    families = {f.name + suffix.get(f.type, "") for f in status_families(manual_status)}
    assert families == documented


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
    assert ipsecd_lines(body) == ipsecd_lines(render_metrics(_status()))
    assert value(body, "ipsecd_tunnel_up", peer="site-b") == 1


def test_each_scrape_reads_a_fresh_status() -> None:
    calls = {"n": 0}

    def get_status() -> DaemonStatus:
        calls["n"] += 1
        return replace(_status(), uptime_seconds=calls["n"])

    def scrape_twice(port: int) -> list[bytes]:
        return [_raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(2)]

    first, second = _with_server(scrape_twice, get_status)
    assert b"\nipsecd_uptime_seconds 1.0\n" in first
    assert b"\nipsecd_uptime_seconds 2.0\n" in second


def test_a_scrape_awaits_the_stepwise_status_when_given() -> None:
    """With ``prepare`` (the daemon's status_stepwise, which reads packets between its
    steps) each scrape awaits it, and the one-piece ``get_status`` is not called."""
    awaited = {"n": 0}

    def one_piece() -> DaemonStatus:
        raise AssertionError("the one-piece status was built")

    async def stepwise() -> DaemonStatus:
        awaited["n"] += 1
        await asyncio.sleep(0)
        return replace(_status(), uptime_seconds=41.0 + awaited["n"])

    async def main() -> bytes:
        server = MetricsServer("127.0.0.1", 0, one_piece, stepwise)
        await server.start()
        try:
            [(_, port)] = server.addresses
            return await asyncio.to_thread(_raw, port, b"GET /metrics HTTP/1.0\r\n\r\n")
        finally:
            await server.close()

    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:40]
    assert b"\nipsecd_uptime_seconds 42.0\n" in answer
    assert awaited["n"] == 1


def test_a_scrape_without_a_worker_thread_is_rendered_in_the_loop(monkeypatch) -> None:
    async def stepwise() -> DaemonStatus:
        return _status()

    async def no_thread(*args: object, **kwargs: object) -> object:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)

    async def main() -> bytes:
        server = MetricsServer("127.0.0.1", 0, _status, stepwise)
        await server.start()
        try:
            [(_, port)] = server.addresses
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _raw, port, b"GET /metrics HTTP/1.0\r\n\r\n")
        finally:
            await server.close()

    answer = asyncio.run(main())
    assert b" 200 " in answer.split(b"\r\n", 1)[0]
    assert value(answer.decode().partition("\r\n\r\n")[2], "ipsecd_tunnel_up", peer="site-b") == 1


def test_raw_get_closes_after_one_answer() -> None:
    answer = _with_server(lambda port: _raw(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert ipsecd_lines(body.decode()) == ipsecd_lines(render_metrics(_status()))


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
