"""The SA database's outbound order (RFC 4301 §4.4.1), kept incrementally.

:class:`SaDatabase` files each SA's selector pairs by bisection as it starts or stops
sending; these tests hold it to the order the database had when it re-sorted every
pair on each change (the reference model below): most specific remote range first,
then local range, then the newest sender, then the SA's own pair order.
"""

from __future__ import annotations

import os
import random

from ipsecd.crypto.registry import ENCRYPTION
from ipsecd.dataplane.sad import InstalledChildSa, SaDatabase
from ipsecd.esp.sa import InboundEspSa, OutboundEspSa
from ipsecd.selectors import TrafficSelector

GCM = ENCRYPTION["aes128gcm16"]


def child(spi: int, local: list[str], remote: list[str], peer: str = "b") -> InstalledChildSa:
    """A CHILD_SA with inbound SPI ``spi`` for ``local`` -> ``remote`` (prefixes)."""
    lts = tuple(TrafficSelector.from_prefix(p) for p in local)
    rts = tuple(TrafficSelector.from_prefix(p) for p in remote)
    key = os.urandom(20)
    return InstalledChildSa(
        peer,
        InboundEspSa(spi, GCM, None, key, b"", src_selectors=rts, dst_selectors=lts),
        OutboundEspSa(spi + 1, GCM, None, key, b""),
        lts,
        rts,
        ("192.0.2.1", 4500),
        ("192.0.2.2", 4500),
    )


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


class Reference:
    """The database as it was: a newest-first sender list, every pair re-sorted per change."""

    def __init__(self) -> None:
        self.by_spi: dict[int, InstalledChildSa] = {}
        self.outbound: list[InstalledChildSa] = []

    def install(self, sa: InstalledChildSa, outbound: bool) -> None:
        self.by_spi[sa.inbound.spi] = sa
        if outbound:
            self.outbound.insert(0, sa)

    def activate(self, spi: int) -> None:
        sa = self.by_spi.get(spi)
        if sa is not None and all(s is not sa for s in self.outbound):
            self.outbound.insert(0, sa)

    def remove(self, spi: int) -> None:
        sa = self.by_spi.pop(spi, None)
        if sa is not None:
            self.outbound = [s for s in self.outbound if s is not sa]

    def lookup(self, version: int, src: int, dst: int) -> InstalledChildSa | None:
        ranked = [
            ((m[4] - m[3], m[2] - m[1], newest), m, sa)
            for newest, sa in enumerate(self.outbound)
            for m in sa._match
        ]
        ranked.sort(key=lambda r: r[0])
        for _, (v, ls, le, rs, re, _), sa in ranked:
            if v == version and ls <= src <= le and rs <= dst <= re:
                return sa
        return None

    def order(self) -> list[InstalledChildSa]:
        seen = {id(s) for s in self.outbound}
        return [*self.outbound, *(s for s in self.by_spi.values() if id(s) not in seen)]


def test_newest_of_equally_specific_sends_and_the_older_takes_over_when_it_goes() -> None:
    old = child(0x100, ["10.1.0.0/24"], ["10.2.0.0/24"])
    new = child(0x200, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad = SaDatabase()
    sad.install(old)
    sad.install(new)
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is new
    sad.remove(0x200)
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is old
    sad.remove(0x100)
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is None
    assert len(sad) == 0


def test_inbound_only_sa_sends_once_activated_as_the_newest() -> None:
    """A rekey responder installs the new SA inbound only; activated, it takes over."""
    old = child(0x100, ["10.1.0.0/24"], ["10.2.0.0/24"])
    new = child(0x200, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad = SaDatabase()
    sad.install(old)
    sad.install(new, outbound=False)
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is old
    assert list(sad) == [old, new]
    assert sad.activate_outbound(0x200) is new
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is new
    assert list(sad) == [new, old]
    assert sad.activate_outbound(0x100) is old  # already sending: no change
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is new
    assert sad.activate_outbound(0x999) is None


def test_a_narrower_older_sa_beats_a_wider_newer_one_and_all_pairs_go_with_their_sa() -> None:
    narrow = child(0x100, ["10.1.0.0/24", "10.1.1.0/24"], ["10.2.5.0/24", "10.3.0.0/24"])
    wide = child(0x200, ["10.1.0.0/16"], ["10.2.0.0/16", "10.3.0.0/16"])
    sad = SaDatabase()
    sad.install(narrow)
    sad.install(wide)
    for src, dst in (("10.1.0.1", "10.2.5.1"), ("10.1.1.1", "10.3.0.9")):
        assert sad.lookup_outbound(4, ip(src), ip(dst)) is narrow
    assert sad.lookup_outbound(4, ip("10.1.2.1"), ip("10.2.5.1")) is wide
    sad.remove(0x100)  # every one of its four pairs
    for src, dst in (("10.1.0.1", "10.2.5.1"), ("10.1.1.1", "10.3.0.9")):
        assert sad.lookup_outbound(4, ip(src), ip(dst)) is wide
    sad.remove(0x200)
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.5.1")) is None


def test_removing_an_sa_that_never_sent_leaves_the_senders() -> None:
    sending = child(0x100, ["10.1.0.0/24"], ["10.2.0.0/24"])
    waiting = child(0x200, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad = SaDatabase()
    sad.install(sending)
    sad.install(waiting, outbound=False)
    assert sad.remove(0x200) is waiting
    assert sad.remove(0x200) is None
    assert sad.lookup_outbound(4, ip("10.1.0.1"), ip("10.2.0.1")) is sending


def test_many_sas_installed_activated_and_removed_keep_the_reference_order() -> None:
    """2000 random changes over overlapping selectors of many widths (some SAs with
    several pairs, one peer of three): every look-up, the iteration order and each
    peer's order as the re-sorting database gave them."""
    rng = random.Random(17)
    sad, ref = SaDatabase(), Reference()
    widths = (16, 20, 24, 24, 28, 32)

    def prefix(base: str) -> str:
        bits = rng.choice(widths)
        address = ip(base) | rng.randrange(0, 1 << 16)
        address &= ~((1 << (32 - bits)) - 1) & 0xFFFFFFFF
        return f"{address >> 24}.{address >> 16 & 255}.{address >> 8 & 255}.{address & 255}/{bits}"

    probes = [(ip("10.1.0.0") | rng.randrange(1 << 16), ip("10.2.0.0") | rng.randrange(1 << 16))]
    spi = 0x1000
    for step in range(2000):
        action = rng.random()
        if action < 0.45 or not ref.by_spi:
            spi += 2
            sa = child(
                spi,
                [prefix("10.1.0.0") for _ in range(rng.choice((1, 1, 2)))],
                [prefix("10.2.0.0") for _ in range(rng.choice((1, 1, 2)))],
                peer=rng.choice("xyz"),
            )
            outbound = rng.random() < 0.8
            sad.install(sa, outbound=outbound)
            ref.install(sa, outbound)
            for ts_l in sa.local_ts:
                for ts_r in sa.remote_ts:  # probe each new pair's corners and just outside
                    for s in (ts_l.start, ts_l.end, ts_l.end + 1):
                        for d in (ts_r.start - 1, ts_r.start, ts_r.end):
                            probes.append((s, d))
        elif action < 0.6:
            some = rng.choice(list(ref.by_spi))
            sad.activate_outbound(some)
            ref.activate(some)
        else:
            some = rng.choice(list(ref.by_spi))
            assert sad.remove(some) is ref.by_spi[some]
            ref.remove(some)
        if step % 50 == 0 or step > 1950:
            for src, dst in probes[-400:]:
                assert sad.lookup_outbound(4, src, dst) is ref.lookup(4, src, dst), (step, src, dst)
            assert list(sad) == ref.order()
            for peer in "xyz":
                assert sad.for_peer(peer) == [s for s in ref.order() if s.peer == peer]
    assert len(sad) == len(ref.by_spi) > 100


def test_a_retired_sa_stops_sending_at_once_and_opens_until_its_grace_ends() -> None:
    """A rekeyed CHILD_SA after its Delete: no outbound use, inbound for the grace only."""
    from ipsecd.dataplane.sad import REKEYED_INBOUND_GRACE

    db = SaDatabase()
    old = child(0x1000, ["10.1.0.0/16"], ["10.2.0.0/16"])
    new = child(0x2000, ["10.1.0.0/16"], ["10.2.0.0/16"])
    db.install(old)
    db.install(new)
    src, dst = ip("10.1.0.5"), ip("10.2.0.7")
    assert db.retire(0x1000, now=100.0) is old
    assert db.lookup_outbound(4, src, dst) is new
    db.remove(0x2000)
    assert db.lookup_outbound(4, src, dst) is None  # the retired SA never sends again
    assert db.lookup_inbound(0x1000) is old and db.retiring(0x1000)
    assert db.next_expiry() == 100.0 + REKEYED_INBOUND_GRACE
    assert db.expire(100.0 + REKEYED_INBOUND_GRACE - 0.001) == []
    assert db.lookup_inbound(0x1000) is old
    assert db.expire(100.0 + REKEYED_INBOUND_GRACE) == [old]
    assert db.lookup_inbound(0x1000) is None and len(db) == 0 and db.next_expiry() is None
    assert db.retire(0x1000, now=200.0) is None  # unknown SPI: nothing to keep


def test_retired_sas_expire_oldest_first_and_an_sa_installed_under_the_spi_stays() -> None:
    db = SaDatabase()
    sas = [child(spi, ["10.1.0.0/16"], ["10.2.0.0/16"]) for spi in (0x10, 0x20, 0x30)]
    for sa in sas:
        db.install(sa)
    db.retire(0x10, now=1.0)
    db.retire(0x20, now=2.0)
    db.retire(0x30, now=3.0)
    again = child(0x20, ["10.1.0.0/16"], ["10.2.0.0/16"])
    db.install(again)  # (a new SA drew the same random SPI: 1 in 2**32 per SA)
    db.remove(0x30)  # removed outright (its IKE SA went): no longer retiring
    assert not db.retiring(0x30)
    assert db.expire(100.0) == [sas[0]]
    assert db.lookup_inbound(0x20) is again and db.next_expiry() is None
