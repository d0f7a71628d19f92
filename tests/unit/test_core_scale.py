"""The core's per-peer index and the status document at scale: what made an IKE event
or a status request cost O(SAs) or O(peers²) (issue 17)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from ipsecd.daemon.core import PeerIndex
from ipsecd.daemon.status import DataplaneStatus, _lists
from ipsecd.dataplane.sad import SaDatabase
from tests.unit.core_rig import CoreRig
from tests.unit.ike_pair_support import side_a, side_b
from tests.unit.test_dataplane import tunnel_pair


def _old_lists(value: object) -> object:
    if isinstance(value, dict):
        return {k: _old_lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_old_lists(v) for v in value]
    return value


def test_peer_index_keeps_the_sa_database_order() -> None:
    """Installs, outbound activations and removals in random order: the index lists each
    peer's SAs exactly as ``SaDatabase.for_peer`` does."""
    rng = random.Random(17)
    sad, index = SaDatabase(), PeerIndex()
    live: list[int] = []
    for step in range(300):
        action = rng.random()
        if action < 0.5 or not live:
            sa, _ = tunnel_pair(spi_ab=0x10000 + step, spi_ba=0x20000 + step)
            sa = dataclasses.replace(sa, peer=rng.choice("abc"))
            outbound = rng.random() < 0.6
            sad.install(sa, outbound=outbound)
            index.installed(sa, outbound)
            live.append(sa.inbound.spi)
        elif action < 0.75:
            spi = rng.choice(live)
            if sad.activate_outbound(spi) is not None:
                index.sending(spi)
        else:
            spi = live.pop(rng.randrange(len(live)))
            gone = sad.remove(spi)
            assert gone is not None
            index.removed(gone)
        for peer in "abcd":
            assert index.of(peer) == sad.for_peer(peer)
        assert index.up == len({sa.peer for sa in sad})


def test_status_document_is_what_asdict_gave(tmp_path: Path) -> None:
    r = CoreRig(tmp_path, side_a(), side_b())
    status = r.core.status(r.now + 2, wall=0.0, tun="t0", listen=[], dataplane=DataplaneStatus())
    assert _lists(status) == _old_lists(dataclasses.asdict(status))


def test_candidates_index_finds_what_the_scan_found(tmp_path: Path) -> None:
    """IKE_AUTH's peer lookup by IDi through the index: the first matching candidate,
    as the linear scan with ``same_id`` chose it (names case-insensitive, duplicates
    resolved by order, unknown ids not found)."""
    from bench.scale import PSK, responder_config
    from ipsecd.config import load_config
    from ipsecd.ike.candidates import Candidates, first_with_id
    from ipsecd.ike.peer_auth import same_id

    (tmp_path / "psk").write_text(PSK + "\n")
    (tmp_path / "psk").chmod(0o600)
    text = responder_config(40, tmp_path, ["192.0.2.2"], any_peer=True)
    text = text.replace("remote_id: '@a7.example'", "remote_id: 'ops@a7.example'")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    peers = load_config(path).peers
    indexed = Candidates(peers)
    for ident in (b"a3.example", b"A3.EXAMPLE", b"ops@A7.example", b"a7.example", b"zz"):
        for id_type in (2, 3):  # ID_FQDN, ID_RFC822_ADDR
            theirs = (id_type, ident)
            scan = next(
                (p for p in peers if p.auth is not None and same_id(p.auth.remote_id, theirs)),
                None,
            )
            assert indexed.first_with_id(theirs) is scan
            assert first_with_id(list(peers), theirs) is scan


def test_usage_goes_to_ike_for_the_sas_that_moved_only(tmp_path: Path) -> None:
    """Every USAGE_INTERVAL the core tells IKE what each CHILD_SA carried; an idle SA is
    skipped (it cost an IKE update per second each: 1.8 % of a core with 1000 tunnels)."""
    from tests.unit.ike_pair_support import ipv4_packet

    r = CoreRig(tmp_path, side_a(), side_b())
    told: list[tuple[int, int]] = []
    real = r.core.ike.child_usage

    def child_usage(
        peer: str, spi_in: int, octets: int, packets: int, now: float, **kw: int
    ) -> None:
        told.append((spi_in, packets))
        real(peer, spi_in, octets, packets, now, **kw)

    r.core.ike.child_usage = child_usage
    (sa,) = r.core.sad
    r.advance(3.0)
    assert told == []  # nothing moved
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")] * 3)
    r.advance(1.0)
    assert told == [(sa.inbound.spi, 3)]
    (child,) = r.ike.ike_sa("b").children.values()
    assert child.packets == 3  # IKE has it (soft and hard limits by volume)
    r.advance(3.0)
    assert told == [(sa.inbound.spi, 3)]  # idle again: not told again
    r.from_tun([ipv4_packet("10.1.0.5", "10.2.0.5")])
    r.advance(1.0)
    assert told[-1] == (sa.inbound.spi, 4)
