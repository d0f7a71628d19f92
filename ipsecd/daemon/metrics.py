"""Prometheus metrics: the status document in the text exposition format, over HTTP.

The text format (Prometheus "Exposition formats", text-based format version
0.0.4) is a few lines per family, so it is written here instead of pulling in
prometheus-client::

    # HELP ipsecd_tunnel_up Whether at least one CHILD_SA to the peer is installed.
    # TYPE ipsecd_tunnel_up gauge
    ipsecd_tunnel_up{peer="site-b"} 1

Every number comes from the status model (:class:`ipsecd.daemon.status.DaemonStatus`),
the same objects ``ipsecctl status --json`` prints, so the two never disagree.  Per-SA
counters start at zero when an SA is rekeyed; per-peer counters are sums over
the installed SAs and so reset too — Prometheus' ``rate()`` treats a decrease
as a counter reset, which is what happened.

:class:`MetricsServer` is a deliberately tiny HTTP/1.0-style server: one
``GET /metrics`` per connection, bounded request size and read time, the
connection closed after the answer.  It is meant for a local address (the
endpoint is off unless configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from ipsecd.daemon import logs
from ipsecd.daemon.status import DaemonStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8 * 1024  # request line + headers; a scrape needs a few hundred bytes
READ_TIMEOUT = 5.0  # seconds to send the request head
WRITE_TIMEOUT = 10.0
METRICS_PATH = "/metrics"

# Daemon/IKE counter names that mean "a rekey completed", by kind.  Summed into
# ipsecd_rekeys_total{kind=...}; absent counters count as zero.
REKEY_COUNTERS: Mapping[str, tuple[str, ...]] = {
    "child": ("child_sa_rekeyed",),
    "ike": ("ike_sa_rekeyed",),
}
HANDSHAKE_FAILURE_COUNTER = "negotiation_failed"

Labels = tuple[tuple[str, str], ...]


# -- the text format -------------------------------------------------------------------------
def escape_label_value(value: str) -> str:
    r"""Label values escape ``\``, ``"`` and newline (exposition format, "Text format details")."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    r"""HELP text escapes only ``\`` and newline (exposition format, "Comments, help text")."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float | int | bool) -> str:
    """Sample values are Go ParseFloat numbers; ``NaN``, ``+Inf``, ``-Inf`` spelled out."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass
class MetricFamily:
    """One ``# HELP`` / ``# TYPE`` block and its samples (all lines of a name stay together)."""

    name: str
    type: str  # "counter" | "gauge"
    help: str
    samples: dict[Labels, float | int] = field(default_factory=dict)

    def add(self, value: float | int | bool, **labels: str) -> None:
        """Add ``value`` to the sample with these labels (so per-peer sums accumulate)."""
        key: Labels = tuple(labels.items())
        self.samples[key] = self.samples.get(key, 0) + value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for labels, value in self.samples.items():
            if labels:
                inner = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in labels)
                lines.append(f"{self.name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{self.name} {format_value(value)}")
        return lines


def render_metrics(status: DaemonStatus) -> str:
    """Render the status model as Prometheus text format 0.0.4.

    Families always carry their HELP/TYPE lines, even with no sample, so a
    scrape of an idle daemon still documents what it will report.  Label order
    is fixed and samples follow the model's order (peers in config order),
    so the output is stable for tests and diffs.
    """
    families: dict[str, MetricFamily] = {}

    def family(name: str, kind: str, text: str) -> MetricFamily:
        fam = families.get(name)
        if fam is None:
            fam = families[name] = MetricFamily(f"ipsecd_{name}", kind, text)
        return fam

    uptime = family("uptime_seconds", "gauge", "Seconds since the daemon started.")
    mtu = family("tun_mtu_bytes", "gauge", "MTU of the TUN device.")
    peer_info = family(
        "peer_info", "gauge", "Constant 1 per configured peer; labels carry its mode and state."
    )
    up = family("tunnel_up", "gauge", "Whether at least one CHILD_SA to the peer is installed.")
    child_sas = family("child_sas", "gauge", "Installed CHILD_SAs per peer.")
    last_seen = family(
        "peer_last_seen_seconds",
        "gauge",
        "Seconds since IKE or ESP last came in from the peer (dead peer detection).",
    )
    peer_packets = family(
        "peer_packets_total", "counter", "ESP packets per peer and direction (installed SAs)."
    )
    peer_bytes = family(
        "peer_bytes_total", "counter", "Inner bytes per peer and direction (installed SAs)."
    )
    peer_drops = family(
        "peer_drops_total", "counter", "Inbound ESP packets dropped per peer, by reason."
    )
    sa_packets = family("sa_packets_total", "counter", "ESP packets per CHILD_SA and direction.")
    sa_bytes = family("sa_bytes_total", "counter", "Inner bytes per CHILD_SA and direction.")
    sa_drops = family(
        "sa_drops_total", "counter", "Inbound packets dropped per CHILD_SA, by reason."
    )
    sa_age = family("sa_established_seconds", "gauge", "Seconds since the CHILD_SA was installed.")
    drops = family(
        "drops_total",
        "counter",
        "Packets dropped by the packet processor before or outside any SA, by reason.",
    )
    rekeys = family("rekeys_total", "counter", "Completed rekeys, by kind (child or ike).")
    failures = family(
        "handshake_failures_total", "counter", "IKE negotiations that failed (any peer)."
    )
    daemon_events = family("daemon_events_total", "counter", "Daemon event counters, by name.")
    ike_events = family("ike_events_total", "counter", "IKE layer event counters, by name.")
    half_open = family(
        "ike_half_open_sas", "gauge", "Responder IKE SAs waiting for IKE_AUTH (half-open)."
    )
    cookies_on = family(
        "ike_cookies_required", "gauge", "1 while IKE_SA_INIT requests must carry a COOKIE."
    )

    if status.uptime_seconds is not None:
        uptime.add(status.uptime_seconds)
    if status.mtu is not None:
        mtu.add(status.mtu)

    for peer in status.peers:
        name = peer.name
        peer_info.add(1, peer=name, mode=peer.mode, state=peer.state)
        up.add(peer.up, peer=name)
        child_sas.add(len(peer.children), peer=name)
        seen = peer.last_seen_seconds
        if seen is not None:
            last_seen.add(seen, peer=name)
        for direction in ("in", "out"):
            peer_packets.add(0, peer=name, direction=direction)
            peer_bytes.add(0, peer=name, direction=direction)
        for child in peer.children:
            sa = {"peer": name, "spi_in": child.spi_in, "spi_out": child.spi_out}
            for direction, packets, nbytes in (
                ("in", child.packets_in, child.bytes_in),
                ("out", child.packets_out, child.bytes_out),
            ):
                peer_packets.add(packets, peer=name, direction=direction)
                peer_bytes.add(nbytes, peer=name, direction=direction)
                sa_packets.add(packets, **sa, direction=direction)
                sa_bytes.add(nbytes, **sa, direction=direction)
            for reason, count in sorted(child.drops.items()):
                peer_drops.add(count, peer=name, reason=reason)
                sa_drops.add(count, **sa, reason=reason)
            sa_age.add(child.established_seconds, **sa)

    for reason, count in sorted(status.drops.items()):
        drops.add(count, reason=reason)
    dos = status.ike_dos
    if dos:
        half_open.add(int(dos.get("half_open") or 0))
        cookies_on.add(bool(dos.get("cookies_required")))

    counters, ike_counters = status.counters, status.ike_counters
    for kind, names in REKEY_COUNTERS.items():
        total = sum(counters.get(n, 0) + ike_counters.get(n, 0) for n in names)
        rekeys.add(total, kind=kind)
    failures.add(counters.get(HANDSHAKE_FAILURE_COUNTER, 0))
    for name, count in sorted(counters.items()):
        daemon_events.add(count, event=name)
    for name, count in sorted(ike_counters.items()):
        ike_events.add(count, event=name)

    lines: list[str] = []
    for fam in families.values():
        lines += fam.render()
    return "\n".join(lines) + "\n"


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
    """Serve ``GET /metrics`` (and HEAD) with :func:`render_metrics` of ``get_status()``.

    Anything else is answered 404 (other paths), 405 (other methods) or 400/431
    (malformed or oversized head), then the connection is closed.
    """

    def __init__(self, host: str, port: int, get_status: Callable[[], DaemonStatus]) -> None:
        self.host = host
        self.port = port
        self.get_status = get_status
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
        return self._dispatch(head)

    def _dispatch(self, head: bytes) -> bytes:
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
        try:
            body = render_metrics(self.get_status()).encode("utf-8")
        except Exception as exc:  # a broken status must not kill the endpoint
            self.log.error("metrics: cannot build status", error=str(exc))
            return _response(500, b"cannot build status\n")
        return _response(200, body, CONTENT_TYPE, head=method == b"HEAD")
