"""Why an inbound ESP or AH packet was dropped, and the counters kept per reason.

RFC 4303 §3.4 lists the checks a receiver makes (SA lookup, sequence number,
integrity, decryption, padding), RFC 4302 §3.4 the same for AH; RFC 4301 §5.2
adds the check that the inner packet matches the SA's traffic selectors.
Every drop is counted under exactly one reason so an operator can tell an
attack (``bad_icv``, ``replay``) from a misconfiguration (``unknown_spi``,
``outside_selectors``).
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    """One counter per reason a packet is not delivered."""

    BAD_ICV = "bad_icv"  # integrity check failed (RFC 4303 §3.4.4)
    REPLAY = "replay"  # duplicate or left of the window (RFC 4303 §3.4.3)
    TOO_SHORT = "too_short"  # shorter than header + IV + minimal payload + ICV
    BAD_PADDING = "bad_padding"  # pad length/content wrong (RFC 4303 §2.4)
    UNKNOWN_SPI = "unknown_spi"  # no SA for this SPI (RFC 4303 §3.4.2)
    OUTSIDE_SELECTORS = "outside_selectors"  # inner addresses not allowed (RFC 4301 §5.2)
    NO_SA = "no_sa"  # outbound: no SA covers the packet (RFC 4301 §5.1)
    # outbound, no SA: link-scoped IPv6 the kernel itself sends on the TUN device (router
    # solicitations, MLD reports); never tunnelled (RFC 4291 §2.5.6), so not a "no tunnel up".
    IPV6_LINK_LOCAL = "ipv6_link_local"
    MALFORMED = "malformed"  # structurally invalid once authenticated/parsed
    DUMMY = "dummy"  # next header 59: dummy/TFC packet, dropped silently (RFC 4303 §2.6)
    FRAGMENT = "fragment"  # IP fragment offered to AH / transport mode (RFC 4302 §3.4.1)


# Drops that are the protocol working as designed, not errors.
NON_ERROR_REASONS: frozenset[DropReason] = frozenset({DropReason.DUMMY})


def new_drop_counters() -> dict[DropReason, int]:
    """A zeroed counter for every reason (so status output lists them all)."""
    return dict.fromkeys(DropReason, 0)
