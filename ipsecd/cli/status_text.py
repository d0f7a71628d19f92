"""Text for ``ipsecctl status`` and ``ipsecctl conns``, from the daemon's JSON documents.

In the spirit of ``swanctl --list-sas`` / ``--list-conns`` and ``wg show``: one block
per peer with its state, IKE SA (identities, age, algorithms, SPIs) and each
CHILD_SA (selectors, age, rekey and hard expiry, last packet each way, traffic),
the peer's transfer since the daemon started and its last error with its age.
Only formats: every number is in the status document (docs/status.schema.json).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Doc = Mapping[str, Any]


class Style:
    """ANSI colours, only when writing to a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.tty else text

    def bold(self, t: str) -> str:
        return self._c("1", t)

    def good(self, t: str) -> str:
        return self._c("32", t)

    def bad(self, t: str) -> str:
        return self._c("31", t)

    def dim(self, t: str) -> str:
        return self._c("2", t)


def size(n: float) -> str:
    """``420 B``, ``1.5 KiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def duration(seconds: float) -> str:
    """``45s``, ``3m 12s``, ``2h 5m``, ``3d 4h`` (two units at most, like ``wg show``)."""
    total = int(seconds)
    parts: list[str] = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= length or (unit == "s" and not parts):
            parts.append(f"{total // length}{unit}")
            total %= length
        if len(parts) == 2:
            break
    return " ".join(parts)


def _ago(seconds: float | None, never: str = "never") -> str:
    return never if seconds is None else f"{duration(seconds)} ago"


def rows(pairs: Sequence[tuple[str, str]], indent: str) -> list[str]:
    """``key: value`` lines, values aligned; an empty key continues the line above."""
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{indent}{k + ':' if k else '':<{width + 1}} {v}" for k, v in pairs]


def format_dos(dos: Doc, counters: Doc, style: Style) -> str:
    """The responder's DoS protection in one line: half-open SAs, cookies, drops."""
    cookies = style.bad("on") if dos.get("cookies_required") else "off"
    text = (
        f"ike responder: {dos.get('half_open', 0)} half-open"
        f" (at most {dos.get('half_open_per_source')} per source,"
        f" {dos.get('half_open_limit')} in all), cookies {cookies}"
        f" (from {dos.get('cookie_threshold')} half-open)"
    )
    shown = [
        ("cookies_sent", "cookies sent"),
        ("cookies_invalid", "invalid cookies"),
        ("half_open_dropped", "dropped over the limit"),
        ("half_open_source_dropped", "dropped per source"),
        ("init_replays", "replays dropped"),
    ]
    extra = [f"{label} {counters[key]}" for key, label in shown if counters.get(key)]
    return text + ("; " + ", ".join(extra) if extra else "")


def _nonzero(counts: Doc) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v)


def _selectors(local: Sequence[str], remote: Sequence[str]) -> str:
    return f"{', '.join(local) or '(none)'} === {', '.join(remote) or '(none)'}"


def _traffic(packets: int, nbytes: int, last_seconds: float | None = None) -> str:
    text = f"{size(nbytes)}, {packets} packets"
    return text if last_seconds is None else f"{text}, last {duration(last_seconds)} ago"


def _ike_rows(ike: Doc) -> list[tuple[str, str]]:
    age = ike.get("established_seconds")
    when = f"established {duration(age)} ago" if age is not None else str(ike["state"])
    if ike.get("rekey_in_seconds") is not None:
        when += f", rekey in {duration(ike['rekey_in_seconds'])}"
    spis = f"{ike.get('local_spi') or '-'}_local {ike.get('remote_spi') or '-'}_remote"
    pairs = [
        ("ike sa", f"{ike['role']}, {when}"),
        ("", f"{ike.get('algorithm') or '(negotiating)'}  {spis}"),
        ("", f"{ike['local']} <-> {ike['remote']}"),
    ]
    if ike.get("local_id") or ike.get("remote_id"):
        pairs.append(("identities", f"{ike.get('local_id')} <-> {ike.get('remote_id')}"))
    if ike.get("dpd") != "off" or ike.get("last_heard_seconds") is not None:
        text = str(ike.get("dpd"))
        if ike.get("last_heard_seconds") is not None:
            text += f", peer last heard {duration(ike['last_heard_seconds'])} ago"
        if ike.get("dpd_delay_seconds"):
            text += f" (liveness check after {ike['dpd_delay_seconds']}s of silence)"
        pairs.append(("dpd", text))
    nat = []
    if ike.get("nat_local"):
        nat.append("we are behind a NAT (sending keepalives)")
    if ike.get("nat_remote"):
        nat.append("the peer is behind a NAT")
    if nat:
        pairs.append(("nat", "; ".join(nat)))
    if ike.get("fragmentation"):
        pairs.append(("fragmentation", "on (RFC 7383)"))
    return pairs


def _child_lines(child: Doc) -> list[str]:
    head = f"  child {child['spi_in']}_in {child['spi_out']}_out  {child['algorithm']}"
    if child.get("state") != "installed":
        head += f"  {child['state']}"
    times = [f"established {duration(child['established_seconds'])} ago"]
    if child.get("rekey_in_seconds") is not None:
        times.append(f"rekey in {duration(child['rekey_in_seconds'])}")
    if child.get("expires_in_seconds") is not None:
        times.append(f"expires in {duration(child['expires_in_seconds'])}")
    pairs = [
        ("selectors", _selectors(child["local_ts"], child["remote_ts"])),
        ("age", ", ".join(times)),
        ("in", _traffic(child["packets_in"], child["bytes_in"], child.get("last_in_seconds"))),
        (
            "out",
            _traffic(child["packets_out"], child["bytes_out"], child.get("last_out_seconds")),
        ),
    ]
    drops = _nonzero(child.get("drops") or {})
    if drops:
        pairs.append(("drops", drops))
    return [head, *rows(pairs, "    ")]


_ON_DEMAND = {"idle": "waiting for traffic to remote_ts", "up": "started by traffic"}


def _peer_lines(peer: Doc, style: Style) -> list[str]:
    state = str(peer["state"])
    shown = style.good(state) if peer["up"] else style.bad(state)
    lines = [f"{style.bold('peer ' + peer['name'])}: {shown}  {peer['local']} <-> {peer['remote']}"]
    pairs: list[tuple[str, str]] = []
    if peer.get("retry_in_seconds") is not None:
        pairs.append(("retry", f"next attempt in {duration(peer['retry_in_seconds'])}"))
    if peer.get("ike"):
        pairs += _ike_rows(peer["ike"])
    on_demand = peer.get("on_demand")
    if on_demand:
        words = _ON_DEMAND.get(on_demand["state"], on_demand["state"])
        if on_demand["state"] == "negotiating":
            words = f"negotiating, {on_demand.get('queued', 0)} packets queued"
        pairs.append(("on demand", words))
    t = peer["transfer"]
    pairs.append(
        (
            "transfer",
            f"{size(t['bytes_in'])} received ({t['packets_in']} packets),"
            f" {size(t['bytes_out'])} sent ({t['packets_out']} packets)",
        )
    )
    drops = _nonzero(peer.get("drops") or {})
    if drops:
        pairs.append(("drops", drops))
    if peer.get("handshake_failures"):
        pairs.append(("failures", f"{peer['handshake_failures']} failed negotiations"))
    if peer.get("last_error"):
        age = peer.get("last_error_seconds")
        when = f" ({duration(age)} ago)" if age is not None else ""
        pairs.append(("last error", style.bad(str(peer["last_error"])) + when))
    lines += rows(pairs, "  ")
    for child in peer["children"]:
        lines += _child_lines(child)
    return lines


def format_status(status: Doc, style: Style) -> str:
    """``ipsecctl status``: the gateway line, then one block per peer."""
    lines = [
        f"{style.bold('ipsecd')}  tun {status['tun']} (mtu {status['mtu']}),"
        f" listening on {', '.join(status['listen']) or 'nothing'},"
        f" up {duration(status['uptime_seconds'])}"
    ]
    if status.get("ike_dos"):
        lines.append(format_dos(status["ike_dos"], status.get("ike_counters") or {}, style))
    for peer in status["peers"]:
        lines.append("")
        lines += _peer_lines(peer, style)
    drops = _nonzero(status.get("drops") or {})
    if drops:
        lines += ["", f"drops outside any SA: {drops}"]
    return "\n".join(lines)


def _lifetime(seconds: float | None, random: float | None) -> str:
    if not seconds:
        return "never"
    return duration(seconds) + (f" (minus up to {duration(random)})" if random else "")


def _conn_lines(peer: Doc, style: Style) -> list[str]:
    child = peer["child"]
    if peer["mode"] == "manual":
        head = f"{style.bold(peer['name'])}: manual SA (no IKE)"
        pairs = [("local", str(peer["local"])), ("remote", str(peer["remote"]))]
        child_head = (
            f"  child {peer['name']}: tunnel, static SPIs"
            f" {child['manual_spi_in']}_in {child['manual_spi_out']}_out"
        )
    else:
        dpd = (
            f"dpd {peer['dpd_delay_seconds']}s ({peer['dpd_action']})"
            if peer["dpd_delay_seconds"]
            else "dpd off"
        )
        head = (
            f"{style.bold(peer['name'])}: IKEv2, start {peer['start']}, {dpd},"
            f" fragmentation {peer['fragmentation']}"
        )
        pairs = [
            ("local", f"{peer['local']}, id {peer['local_id']}, {peer['auth']}"),
            ("remote", f"{peer['remote']}, id {peer['remote_id']}, {peer['auth']}"),
            ("ike", ", ".join(peer["ike_proposals"])),
            (
                "ike rekey",
                _lifetime(peer["ike_rekey_seconds"], peer["ike_rekey_random_seconds"]),
            ),
        ]
        limits = [f"rekey {_lifetime(child['rekey_seconds'], child['rekey_random_seconds'])}"]
        if child.get("life_seconds"):
            limits.append(f"life {duration(child['life_seconds'])}")
        if child.get("rekey_bytes"):
            limits.append(f"rekey after {size(child['rekey_bytes'])}")
        if child.get("rekey_packets"):
            limits.append(f"rekey after {child['rekey_packets']} packets")
        child_head = f"  child {peer['name']}: tunnel, {', '.join(limits)}"
    lines = [head, *rows(pairs, "  "), child_head]
    lines += rows(
        [
            ("esp", ", ".join(child["esp_proposals"])),
            ("local", ", ".join(child["local_ts"])),
            ("remote", ", ".join(child["remote_ts"])),
        ],
        "    ",
    )
    return lines


def format_conns(conns: Doc, style: Style) -> str:
    """``ipsecctl conns``: the configured peers, like ``swanctl --list-conns``."""
    lines = [f"{style.bold('config')} {conns['config']}"]
    for peer in conns["peers"]:
        lines.append("")
        lines += _conn_lines(peer, style)
    return "\n".join(lines)
