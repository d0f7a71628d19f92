"""The effective configuration as YAML: every key with the value the daemon uses.

``ipsecd check --print`` shows it, defaults filled in and derived values
(``rand_time``, ``life_time``, ``local_address``, identities, the account the
daemon drops to) computed, in the order of the schema tables.  Secrets never
appear: a PSK or manual key is shown as the file it comes from.  The output is
itself a valid config file that loads to the same ``Config``.
"""

from __future__ import annotations

from typing import Any

import yaml

from ipsecd.addresses import format_address
from ipsecd.config.schema import Config, GatewayConfig, ManualSaConfig, PeerConfig
from ipsecd.config.users import KEEP_ROOT, service_account


def _auto(value: int | None) -> int | str:
    return "auto" if value is None else value


def _metrics(metrics: tuple[str, int] | None) -> str | None:
    return None if metrics is None else format_address(metrics)


def effective_user(name: str | None) -> str:
    """The account the daemon will run as: ``gateway.user``, else the default one."""
    if name is not None:
        return name
    account = service_account(None)
    return account.pw_name if account is not None else KEEP_ROOT


def _gateway(gw: GatewayConfig) -> dict[str, Any]:
    return {
        "tun": gw.tun,
        "mtu": _auto(gw.mtu),
        "addresses": [str(a) for a in gw.addresses],
        "listen": [str(a) for a in gw.listen],
        "port": gw.port,
        "ike_port": gw.ike_port,
        "control_socket": str(gw.control_socket),
        "metrics": _metrics(gw.metrics),
        "retransmit_timeout": gw.retransmit_timeout,
        "retransmit_tries": gw.retransmit_tries,
        "retry_interval": gw.retry_interval,
        "cookie_threshold": gw.cookie_threshold,
        "half_open_per_source": gw.half_open_per_source,
        "half_open_limit": gw.half_open_limit,
        "fragment_size": _auto(gw.fragment_size),
        "offload": gw.offload,
        "wakeup_interval_ms": gw.wakeup_interval_ms,
        "user": effective_user(gw.user),
        "set_forwarding": gw.set_forwarding,
    }


def _manual(m: ManualSaConfig) -> dict[str, Any]:
    algorithm = m.encr.name + (f"-{m.integ.name}" if m.integ is not None else "")
    return {
        "algorithm": algorithm,
        "esn": m.esn,
        "spi_in": f"{m.spi_in:#x}",
        "spi_out": f"{m.spi_out:#x}",
        "key_file": str(m.key_file),
    }


def _peer(p: PeerConfig) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "name": p.name,
        "remote_address": str(p.remote_address),
        "remote_port": p.remote_port,
        "local_address": str(p.local_address),
        "local_ts": [str(ts) for ts in p.local_ts],
        "remote_ts": [str(ts) for ts in p.remote_ts],
    }
    if p.manual is not None:
        tree["manual"] = _manual(p.manual)
        return tree
    assert p.auth is not None  # a peer has auth: or manual:
    child = p.child_lifetime
    tree.update(
        {
            "start": p.start,
            "fragmentation": p.fragmentation,
            "fragment_size": p.fragment_size,
            "dpd_delay": p.dpd_delay,
            "dpd_action": p.dpd_action,
            "ike": {
                "proposals": [str(x) for x in p.ike_proposals],
                "rekey_time": p.ike_lifetime.rekey_time,
                "rand_time": p.ike_lifetime.rand_time,
            },
            "esp": {
                "proposals": [str(x) for x in p.esp_proposals],
                "rekey_time": child.rekey_time,
                "life_time": round(child.life_time),  # whole seconds, as it is written
                "rand_time": child.rand_time,
                "rekey_bytes": child.rekey_bytes,
                "rekey_packets": child.rekey_packets,
            },
            "auth": {
                "psk_file": str(p.auth.psk_file),
                "allow_weak_psk": p.auth.allow_weak_psk,
                "local_id": str(p.auth.local_id),
                "remote_id": str(p.auth.remote_id),
            },
        }
    )
    return tree


def effective_tree(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data, with every default filled in; no secrets."""
    return {
        "log": {"level": config.log.level, "format": config.log.format},
        "gateway": _gateway(config.gateway),
        "peers": [_peer(p) for p in config.peers],
    }


def effective_yaml(config: Config) -> str:
    """``effective_tree`` as YAML text, keys in schema order."""
    text: str = yaml.safe_dump(
        effective_tree(config), sort_keys=False, default_flow_style=False, width=100
    )
    return text
