"""Prometheus metrics: the status model as metric families, served over HTTP.

A custom collector (:class:`StatusCollector`) turns each scrape's status model
(:class:`ipsecd.daemon.status.DaemonStatus`, the objects ``ipsecctl status --json``
prints) into metric families; prometheus_client writes the text exposition format
(0.0.4) and adds its ``process_*`` and ``python_info`` collectors.  Measured against
the hand-written renderer this replaces: a scrape takes about 2.5 times as long
(1 ms against 0.4 ms for one peer, 35 ms against 13 ms for 100 peers, on the 2-core
test machine under load), and importing prometheus_client adds about 2 MB to the
daemon's 58 MB; in exchange the format's escaping and the process metrics are the
reference library's, not ours.

The contract (docs/operating.md, "Metrics"):

* every counter family is present from the start, at zero, over fixed label sets
  (each configured peer, both directions, every drop reason, every known event);
* per-peer counters are monotonic for the life of the daemon: a CHILD_SA's counts
  are kept when it is rekeyed or deleted (:class:`ipsecd.daemon.ledger.Ledger`);
* no SPI in any label except ``ipsecd_child_sa_info``, one series per installed
  CHILD_SA to join on;
* a peer's state is ``ipsecd_peer_state``: one series per state of the fixed set
  :data:`ipsecd.daemon.status.PEER_STATES`, 1 for the current one.

:class:`MetricsServer` is a deliberately tiny HTTP/1.0-style server: one
``GET /metrics`` per connection, bounded request size and read time, the
connection closed after the answer.  It is meant for a local address (the
endpoint is off unless configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import metadata
from typing import cast

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ipsecd.daemon import logs
from ipsecd.daemon.gcpause import collector_paused
from ipsecd.daemon.status import PEER_STATES, DaemonStatus
from ipsecd.dataplane.offload import BULK_STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8 * 1024  # request line + headers; a scrape needs a few hundred bytes
READ_TIMEOUT = 5.0  # seconds to send the request head
WRITE_TIMEOUT = 10.0
METRICS_PATH = "/metrics"

# Daemon/IKE counter names that mean "a rekey completed", by kind.  Summed into
# ipsecd_rekeys_total{kind=...}.
REKEY_COUNTERS: Mapping[str, tuple[str, ...]] = {
    "child": ("child_sa_rekeyed",),
    "ike": ("ike_sa_rekeyed",),
}
DIRECTIONS = ("in", "out")


def build_version() -> str:
    """The installed distribution's version; ``unknown`` in a tree never installed."""
    try:
        return metadata.version("ipsecd")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- the families ----------------------------------------------------------------------------
def _counter(name: str, text: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"ipsecd_{name}", text, labels=list(labels))


def _gauge(name: str, text: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"ipsecd_{name}", text, labels=list(labels))


def status_families(status: DaemonStatus) -> list[Metric]:
    """The metric families of one status model, in a stable order (peers in config order)."""
    build = InfoMetricFamily("ipsecd_build", "The running ipsecd.", labels=["version", "python"])
    build.add_metric([build_version(), platform.python_version()], {})
    uptime = _gauge("uptime_seconds", "Seconds since the daemon started.")
    uptime.add_metric([], status.uptime_seconds)
    mtu = _gauge("tun_mtu_bytes", "MTU of the TUN device.")
    if status.mtu is not None:
        mtu.add_metric([], status.mtu)

    peer = ["peer"]
    info = _gauge(
        "peer_info",
        "Constant 1 per configured peer; labels carry its configuration.",
        ["peer", "mode", "start", "remote"],
    )
    state = _gauge(
        "peer_state", "1 for the peer's current state, 0 for the others.", ["peer", "state"]
    )
    up = _gauge("tunnel_up", "Whether at least one CHILD_SA to the peer is installed.", peer)
    child_sas = _gauge("child_sas", "Installed CHILD_SAs per peer.", peer)
    ike_sas = _gauge("ike_sas", "IKE SAs with the peer (more than 1 during a rekey).", peer)
    heard = _gauge(
        "peer_last_heard_seconds",
        "Seconds since IKE or ESP last came in from the peer (established IKE SAs only).",
        peer,
    )
    packets = _counter(
        "peer_packets",
        "ESP packets per peer and direction, every CHILD_SA since start.",
        ["peer", "direction"],
    )
    nbytes = _counter(
        "peer_bytes",
        "Inner bytes per peer and direction, every CHILD_SA since start.",
        ["peer", "direction"],
    )
    peer_drops = _counter(
        "peer_drops", "Inbound ESP packets of the peer dropped, by reason.", ["peer", "reason"]
    )
    failures = _counter("handshake_failures", "IKE negotiations with the peer that failed.", peer)
    sa_info = _gauge(
        "child_sa_info",
        "Constant 1 per installed CHILD_SA: its SPIs (hex) and transform.",
        ["peer", "spi_in", "spi_out", "algorithm"],
    )
    for p in status.peers:
        # remote: the endpoint in use, else as written (a DNS name not resolved yet, any)
        info.add_metric([p.name, p.mode, p.start, p.remote or p.remote_host or ""], 1)
        for word in PEER_STATES:
            state.add_metric([p.name, word], 1 if p.state == word else 0)
        up.add_metric([p.name], 1 if p.up else 0)
        child_sas.add_metric([p.name], len(p.children))
        ike_sas.add_metric([p.name], p.ike_sas)
        if p.ike is not None and p.ike.last_heard_seconds is not None:
            heard.add_metric([p.name], p.ike.last_heard_seconds)
        t = p.transfer
        for direction, count, size in (
            ("in", t.packets_in, t.bytes_in),
            ("out", t.packets_out, t.bytes_out),
        ):
            packets.add_metric([p.name, direction], count)
            nbytes.add_metric([p.name, direction], size)
        for reason, count in p.drops.items():
            peer_drops.add_metric([p.name, reason], count)
        failures.add_metric([p.name], p.handshake_failures)
        for c in p.children:
            sa_info.add_metric([p.name, c.spi_in, c.spi_out, c.algorithm], 1)

    drops = _counter("drops", "Packets dropped before or outside any SA, by reason.", ["reason"])
    for reason, count in status.drops.items():
        drops.add_metric([reason], count)
    rekeys = _counter("rekeys", "Completed rekeys, by kind (child or ike).", ["kind"])
    counts = {**status.counters, **status.ike_counters}
    for kind, names in REKEY_COUNTERS.items():
        rekeys.add_metric([kind], sum(counts.get(n, 0) for n in names))
    daemon_events = _counter("daemon_events", "Daemon event counters, by name.", ["event"])
    for name, count in status.counters.items():
        daemon_events.add_metric([name], count)
    ike_events = _counter("ike_events", "IKE layer event counters, by name.", ["event"])
    for name, count in status.ike_counters.items():
        ike_events.add_metric([name], count)
    dataplane = _counter(
        "dataplane_events",
        "TUN device and ESP socket events (offload segments, errors), by name.",
        ["event"],
    )
    offload = _gauge("dataplane_offload", "1 while TUN and UDP offloads (TSO/GSO/GRO) are on.")
    dp = status.dataplane
    offload.add_metric([], 1 if dp.offload else 0)
    bulk_path = _gauge(
        "dataplane_bulk_path",
        "1 for the status of numpy's bulk path (not-loaded, loaded, unavailable).",
        ["status"],
    )
    for bulk_state in BULK_STATES:
        bulk_path.add_metric([bulk_state], 1 if dp.bulk_path == bulk_state else 0)
    for name, value in vars(dp).items():
        if name not in ("offload", "bulk_path"):
            dataplane.add_metric([name], value)
    dos = status.ike_dos
    half_open = _gauge("ike_half_open_sas", "Responder IKE SAs waiting for IKE_AUTH (half-open).")
    half_open.add_metric([], dos.half_open if dos else 0)
    cookies = _gauge("ike_cookies_required", "1 while IKE_SA_INIT requests must carry a COOKIE.")
    cookies.add_metric([], 1 if dos and dos.cookies_required else 0)
    return [
        build,
        uptime,
        mtu,
        info,
        state,
        up,
        child_sas,
        ike_sas,
        heard,
        packets,
        nbytes,
        peer_drops,
        failures,
        sa_info,
        drops,
        rekeys,
        daemon_events,
        ike_events,
        dataplane,
        bulk_path,
        offload,
        half_open,
        cookies,
    ]


class StatusCollector(Collector):
    """A prometheus_client collector over ``get_status()``, called once per scrape."""

    def __init__(self, get_status: Callable[[], DaemonStatus]) -> None:
        self.get_status = get_status

    def describe(self) -> Iterable[Metric]:
        return []  # no status at registration; the names are checked by the tests

    def collect(self) -> Iterable[Metric]:
        return status_families(self.get_status())


def metrics_registry(get_status: Callable[[], DaemonStatus]) -> CollectorRegistry:
    """The status collector plus prometheus_client's ``process_*`` and ``python_info``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(get_status))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render_metrics(status: DaemonStatus) -> str:
    """One scrape's text for ``status`` (what ``GET /metrics`` answers)."""
    return generate_latest(metrics_registry(lambda: status)).decode("utf-8")


# -- the HTTP endpoint -----------------------------------------------------------------------
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def _response(
    code: int, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False
) -> bytes:
    headers = [
        f"HTTP/1.0 {code} {_REASONS[code]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if code == 405:
        headers.append("Allow: GET, HEAD")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + (b"" if head else body)


class MetricsServer:
    """Serve ``GET /metrics`` (and HEAD): the families of ``get_status()``, and the process's.

    Anything else is answered 404 (other paths), 405 (other methods) or 400/431
    (malformed or oversized head), then the connection is closed.
    """

    def __init__(
        self,
        host: str,
        port: int,
        get_status: Callable[[], DaemonStatus],
        prepare: Callable[[], Awaitable[DaemonStatus]] | None = None,
    ) -> None:
        """``prepare``: the status built the daemon's way, a few peers at a time with its
        sockets read between (Daemon.status_stepwise); without it, ``get_status()`` in one
        piece."""
        self.host = host
        self.port = port
        self.registry = metrics_registry(get_status)
        self._prepare = prepare
        self.log = logs.get_logger(component="metrics")
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; with port 0 this tells the ephemeral port."""
        if self._server is None:
            return []
        server = cast(asyncio.Server, self._server)  # what asyncio.start_server returns
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in server.sockets]

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, host=self.host, port=self.port, limit=MAX_REQUEST, reuse_address=True
        )
        self.log.info("metrics endpoint listening", address=[f"{h}:{p}" for h, p in self.addresses])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            answer = await self._answer(reader)
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except TimeoutError:
            return _response(408, b"request timeout\n")
        except asyncio.LimitOverrunError:
            return _response(431, b"request head too large\n")
        except asyncio.IncompleteReadError as exc:
            head = exc.partial  # HTTP/0.9-ish clients that close after the request line
            if not head.strip():
                raise ConnectionResetError from exc
        method = _metrics_request(head)
        if isinstance(method, bytes):
            return method  # the error's answer
        try:
            with collector_paused():
                if self._prepare is None:
                    body = generate_latest(self.registry)
                else:
                    # Rendered in a worker thread from the finished snapshot (frozen
                    # dataclasses, nothing of the daemon's live state): the text of 10 000
                    # peers takes prometheus_client ~1.4 s of Python, which the interpreter
                    # interrupts every 5 ms for the loop's thread, so packets still move.
                    status = await self._prepare()
                    registry = metrics_registry(lambda: status)
                    try:
                        body = await asyncio.to_thread(generate_latest, registry)
                    except RuntimeError:  # no thread to be had (limits): in the loop
                        body = generate_latest(registry)
        except Exception as exc:  # a broken status must not kill the endpoint
            self.log.error("metrics: cannot build status", error=str(exc))
            return _response(500, b"cannot build status\n")
        return _response(200, body, CONTENT_TYPE, head=method == "HEAD")


def _metrics_request(head: bytes) -> str | bytes:
    """The method of a request for the metrics ("GET" or "HEAD"), or the answer to any
    other request (400, 404, 405)."""
    request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = request_line.split()
    if len(parts) not in (2, 3):
        return _response(400, b"bad request line\n")
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0]
    if path != METRICS_PATH.encode():
        return _response(404, b"not found; try /metrics\n")
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"method not allowed\n")
    return method.decode()
