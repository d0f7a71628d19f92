"""Status and conns documents (version 1) as the daemon sends them, for formatting tests.

Hand-written so the expected text is easy to read; tests/unit/test_status_contract.py
checks them against docs/status.schema.json, so they cannot drift from the contract.
"""

from __future__ import annotations

from typing import Any

from ipsecd.daemon.status import DAEMON_EVENTS, DROP_REASONS, IKE_EVENTS


def zeros(names: tuple[str, ...], **counts: int) -> dict[str, int]:
    return {name: counts.get(name, 0) for name in names}


CHILD: dict[str, Any] = {
    "spi_in": "c0ffee01",
    "spi_out": "c0ffee02",
    "name": "site-b",
    "state": "installed",
    "algorithm": "aes256gcm16",
    "mode": "tunnel",
    "encap": "udp",
    "local_ts": ["10.1.0.0/24"],
    "remote_ts": ["10.2.0.0/24", "10.3.0.0/24"],
    "local": "192.0.2.1:4500",
    "remote": "192.0.2.2:4500",
    "established_at": "2024-05-01T11:59:48Z",
    "established_seconds": 12.0,
    "rekey_at": "2024-05-01T12:05:00Z",
    "rekey_in_seconds": 300.0,
    "expires_at": "2024-05-01T13:05:48Z",
    "expires_in_seconds": 3948.0,
    "packets_in": 10,
    "bytes_in": 2048,
    "packets_out": 11,
    "bytes_out": 4096,
    "last_in_at": "2024-05-01T11:59:57Z",
    "last_in_seconds": 3.0,
    "last_out_at": None,
    "last_out_seconds": None,
    "drops": zeros(DROP_REASONS, replay=2),
}

IKE_SA: dict[str, Any] = {
    "state": "established",
    "role": "initiator",
    "local": "192.0.2.1:4500",
    "remote": "192.0.2.2:4500",
    "local_spi": "00112233aabbccdd",
    "remote_spi": "8899aabbccddeeff",
    "local_id": "gw-a.example.org",
    "remote_id": "192.0.2.2",
    "algorithm": "aes256gcm16-prfsha256-x25519",
    "established_at": "2024-05-01T11:55:00Z",
    "established_seconds": 300.0,
    "rekey_at": "2024-05-01T15:40:00Z",
    "rekey_in_seconds": 13200.0,
    "nat_local": True,
    "nat_remote": False,
    "fragmentation": False,
    "dpd": "idle",
    "dpd_delay_seconds": 30,
    "last_heard_at": "2024-05-01T11:59:56Z",
    "last_heard_seconds": 4.2,
    "auth": None,
    "additional_ke": [],
}

PEER_B: dict[str, Any] = {
    "name": "site-b",
    "mode": "ike",
    "start": "initiate",
    "state": "established",
    "up": True,
    "local": "192.0.2.1",
    "remote": "192.0.2.2:500",
    "remote_host": None,
    "local_ts": ["10.1.0.0/24"],
    "remote_ts": ["10.2.0.0/24", "10.3.0.0/24"],
    "ike_sas": 1,
    "retry_at": None,
    "retry_in_seconds": None,
    "last_event": None,
    "next_attempt_in_seconds": None,
    "ike": IKE_SA,
    "children": [CHILD],
    "configured_children": [
        {
            "name": "site-b",
            "start": "initiate",
            "up": True,
            "local_ts": ["10.1.0.0/24"],
            "remote_ts": ["10.2.0.0/24", "10.3.0.0/24"],
            "uncovered_local_ts": [],
            "uncovered_remote_ts": [],
            "on_demand": None,
        }
    ],
    "transfer": {
        "packets_in": 110,
        "bytes_in": 3 * 1024 * 1024,
        "packets_out": 111,
        "bytes_out": 4096,
    },
    "drops": zeros(DROP_REASONS, replay=2),
    "handshake_failures": 0,
    "last_error": None,
    "last_error_at": None,
    "last_error_seconds": None,
    "on_demand": None,
}

PEER_C: dict[str, Any] = {
    **PEER_B,
    "name": "site-c",
    "state": "connecting",
    "up": False,
    "remote": "192.0.2.3:500",
    "remote_ts": ["10.3.0.0/24"],
    "ike_sas": 0,
    "retry_at": "2024-05-01T12:00:25Z",
    "retry_in_seconds": 25.0,
    "last_event": None,
    "next_attempt_in_seconds": 25.0,
    "ike": None,
    "children": [],
    "configured_children": [
        {
            "name": "site-c",
            "start": "initiate",
            "up": False,
            "local_ts": ["10.1.0.0/24"],
            "remote_ts": ["10.3.0.0/24"],
            "uncovered_local_ts": [],
            "uncovered_remote_ts": [],
            "on_demand": None,
        }
    ],
    "transfer": {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0},
    "drops": zeros(DROP_REASONS),
    "handshake_failures": 3,
    "last_error": "AUTHENTICATION_FAILED: peer site-c rejected our authentication",
    "last_error_at": "2024-05-01T11:58:00Z",
    "last_error_seconds": 120.0,
}

STATUS: dict[str, Any] = {
    "version": 1,
    "generated_at": "2024-05-01T12:00:00Z",
    "started_at": "2024-05-01T11:00:00Z",
    "uptime_seconds": 3600.0,
    "tun": "ipsec0",
    "mtu": 1438,
    "listen": ["192.0.2.1:4500", "192.0.2.1:500"],
    "peers": [PEER_B, PEER_C],
    "drops": zeros(DROP_REASONS, no_sa=3),
    "counters": zeros(DAEMON_EVENTS, child_sa_installed=1),
    "dataplane": {
        "offload": True,
        "bulk_path": "loaded",
        "tun_super_segments_read": 0,
        "tun_gso_writes": 0,
        "tun_read_errors": 0,
        "tun_write_errors": 0,
        "udp_gso_sends": 0,
        "udp_gro_receives": 0,
        "udp_send_errors": 0,
    },
    "ike_counters": zeros(IKE_EVENTS, retransmits=1),
    "ike_dos": None,
}

CONNS: dict[str, Any] = {
    "version": 1,
    "config": "/etc/ipsecd/ipsecd.yaml",
    "peers": [
        {
            "name": "site-b",
            "mode": "ike",
            "start": "initiate",
            "local": "192.0.2.1",
            "remote": "192.0.2.2:500",
            "local_id": "gw-a.example.org",
            "remote_id": "192.0.2.2",
            "auth": "psk",
            "ike_proposals": ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"],
            "ike_rekey_seconds": 14400,
            "ike_rekey_random_seconds": 1440,
            "dpd_delay_seconds": 30,
            "dpd_action": "restart",
            "fragmentation": "yes",
            "child": {
                "name": "site-b",
                "start": "initiate",
                "local_ts": ["10.1.0.0/24"],
                "remote_ts": ["10.2.0.0/24"],
                "esp_proposals": ["aes256gcm16"],
                "rekey_seconds": 3600,
                "rekey_random_seconds": 360,
                "life_seconds": 3960.0,
                "rekey_bytes": 0,
                "rekey_packets": 0,
                "manual_spi_in": None,
                "manual_spi_out": None,
                "mode": "tunnel",
                "protocol": "esp",
            },
        },
        {
            "name": "lab",
            "mode": "manual",
            "start": "manual",
            "local": "192.0.2.1",
            "remote": "192.0.2.9:500",
            "local_id": None,
            "remote_id": None,
            "auth": None,
            "ike_proposals": [],
            "ike_rekey_seconds": None,
            "ike_rekey_random_seconds": None,
            "dpd_delay_seconds": 0,
            "dpd_action": "restart",
            "fragmentation": "yes",
            "child": {
                "name": "lab",
                "start": "manual",
                "local_ts": ["10.1.0.0/24"],
                "remote_ts": ["10.9.0.0/24"],
                "esp_proposals": ["aes128gcm16"],
                "rekey_seconds": None,
                "rekey_random_seconds": None,
                "life_seconds": None,
                "rekey_bytes": 0,
                "rekey_packets": 0,
                "manual_spi_in": "00001001",
                "manual_spi_out": "00001002",
                "mode": "tunnel",
                "protocol": "esp",
            },
        },
    ],
}
for _peer in CONNS["peers"]:
    _peer["children"] = [_peer["child"]]  # one child each: the peer's own (shorthand)
