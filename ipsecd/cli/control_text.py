"""What ``ipsecctl up|down|rekey|reload|log`` print: the daemon's answers in words.

The daemon answers with plain data (:mod:`ipsecd.daemon.outcomes`, the reload plan,
log records); these functions only format it, one line per outcome or record.
"""

from __future__ import annotations

import json
from typing import Any

# What happens to the peers of each kind in a reload plan (DaemonCore.reload).
PLAN_WORDS = {
    "added": "new: started as configured",
    "changed": "SAs replaced with the new settings",
    "removed": "SAs deleted, the peer told",
    "unchanged": "SAs kept",
}


def format_ike_sa(ike: dict[str, Any] | None) -> str:
    """``IKE SA 2961d1f6505c3869_local a6d839ec48d93d9b_remote aes256gcm16-prfsha256-x25519
    192.0.2.1:4500 <-> 192.0.2.2:4500`` (the SPI suffixes as in ``ipsecctl status``)."""
    if not ike:
        return "no IKE SA"
    words = [f"IKE SA {ike.get('local_spi')}_local {ike.get('remote_spi')}_remote"]
    if ike.get("algorithm"):
        words.append(str(ike["algorithm"]))
    words.append(f"{ike.get('local')} <-> {ike.get('remote')}")
    return " ".join(words)


def format_child_sa(child: dict[str, Any]) -> str:
    """``CHILD_SA fa3cb21e_in c5d5f243_out aes256gcm16 10.1.0.0/24 === 10.2.0.0/24``."""
    return (
        f"CHILD_SA {child.get('spi_in')}_in {child.get('spi_out')}_out {child.get('algorithm')}"
        f" {child.get('local_ts')} === {child.get('remote_ts')}"
    )


def format_outcome(response: dict[str, Any]) -> str:
    """One line for a settled ``up``/``down``/``rekey`` (success or failure)."""
    peer = response.get("peer", "?")
    outcome = response.get("outcome", "")
    took = f" in {response['seconds']:g} s" if response.get("seconds") else ""
    if not response.get("ok"):
        command = str(response.get("command", "command")).replace("rekey-ike", "rekey --ike")
        failed = f" failed{took}" if outcome == "failed" else ""  # a timeout says so itself
        return f"{command} {peer}{failed}: {response.get('error', 'failed')}"
    parts = []
    if outcome != "down":
        if response.get("command") != "rekey":
            parts.append(format_ike_sa(response.get("ike_sa")))
        parts += [format_child_sa(c) for c in response.get("child_sas") or ()]
    elif response.get("reason"):
        parts.append(str(response["reason"]))
    what = "IKE SA rekeyed" if response.get("command") == "rekey-ike" else outcome
    return f"peer {peer} {what}{took}" + (": " + "; ".join(parts) if parts else "")


def format_plan(response: dict[str, Any]) -> list[str]:
    """The lines of a reload: which peers were added, changed, removed, unchanged."""
    plan = response.get("plan") or {}
    config = response.get("config")
    kinds = [(kind, plan.get(kind) or []) for kind in PLAN_WORDS]
    if not any(names for kind, names in kinds if kind != "unchanged"):
        head = "no peer changed"
    else:
        head = ", ".join(f"{len(names)} {kind}" for kind, names in kinds if names)
    lines = [f"reloaded {config}: {head}" if config else f"reloaded: {head}"]
    width = max(len(kind) for kind in PLAN_WORDS) + 1
    for kind, names in kinds:
        if names:
            lines.append(f"  {kind + ':':<{width}} {', '.join(names)}  ({PLAN_WORDS[kind]})")
    return lines


def _value(value: Any) -> str:
    if isinstance(value, str):
        return (
            value
            if value and not any(c.isspace() or c in "\"'=" for c in value)
            else (json.dumps(value))
        )
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "[]"
    return json.dumps(value, default=str)


def format_record(record: dict[str, Any]) -> str:
    """A log record as one line, like charon's: time, level, event, then key=value."""
    fields = dict(record)
    head = [
        str(fields.pop("timestamp", "")),
        f"{str(fields.pop('level', '')):<7}",
        str(fields.pop("event", "")),
    ]
    rest = " ".join(f"{k}={_value(v)}" for k, v in fields.items())
    return "  ".join(p for p in (*head, rest) if p)
