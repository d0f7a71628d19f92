"""The IKE error family: undecodable input and one exception per RFC 7296 error notify.

:class:`MalformedMessage` is a datagram we cannot read (dropped and counted,
never answered, RFC 7296 §2.21.1); :class:`ProtocolError` and its subclasses
are messages we read and refuse.  :class:`UnsupportedCriticalPayload` is both:
the codec raises it and the IKE SA answers it (§2.5).

Exchanges raise these while processing a message; the IKE SA turns the error
into the notify it must send back (RFC 7296 §3.10.1 error types) and into an
operator-readable ``NegotiationFailed`` reason.  ``str(error)`` is that reason:
it says what was offered, what was expected, and by which side.
"""

from __future__ import annotations

from ipsecd.ike.constants import NotifyType

# RFC 7296 §3.10.1 error notify types, as plain names for the exchanges (one table: constants.py).
UNSUPPORTED_CRITICAL_PAYLOAD = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
INVALID_IKE_SPI = NotifyType.INVALID_IKE_SPI
INVALID_MAJOR_VERSION = NotifyType.INVALID_MAJOR_VERSION
INVALID_SYNTAX = NotifyType.INVALID_SYNTAX
INVALID_MESSAGE_ID = NotifyType.INVALID_MESSAGE_ID
INVALID_SPI = NotifyType.INVALID_SPI
NO_PROPOSAL_CHOSEN = NotifyType.NO_PROPOSAL_CHOSEN
INVALID_KE_PAYLOAD = NotifyType.INVALID_KE_PAYLOAD
AUTHENTICATION_FAILED = NotifyType.AUTHENTICATION_FAILED
SINGLE_PAIR_REQUIRED = NotifyType.SINGLE_PAIR_REQUIRED
NO_ADDITIONAL_SAS = NotifyType.NO_ADDITIONAL_SAS
TS_UNACCEPTABLE = NotifyType.TS_UNACCEPTABLE
TEMPORARY_FAILURE = NotifyType.TEMPORARY_FAILURE
CHILD_SA_NOT_FOUND = NotifyType.CHILD_SA_NOT_FOUND


def notify_name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify {notify_type}"


class MalformedMessage(Exception):
    """An IKE message (or payload) that does not parse; ``reason`` says where and why.

    The only exception the parser raises: callers count the datagram and drop it
    (RFC 7296 §2.21.1 — nothing is answered for a message that cannot be read).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(Exception):
    """A message we cannot accept; ``notify_type`` is the error notify to answer with.

    ``notify_data`` is the notification data to carry (e.g. the group for
    INVALID_KE_PAYLOAD, RFC 7296 §1.3).  ``fatal`` says whether the IKE SA
    must be torn down (errors in IKE_SA_INIT/IKE_AUTH) or only the exchange
    fails (e.g. a CREATE_CHILD_SA that found no proposal, §1.3).
    """

    notify_type: int = INVALID_SYNTAX

    def __init__(self, reason: str, *, notify_data: bytes = b"", fatal: bool = True) -> None:
        # Operators grep for the RFC name of the failure: make sure the text carries it.
        name = notify_name(self.notify_type)
        if name not in reason and self.notify_type != INVALID_SYNTAX:
            reason = f"{name}: {reason}"
        super().__init__(reason)
        self.reason = reason
        self.notify_data = notify_data
        self.fatal = fatal

    @property
    def notify_name(self) -> str:
        return notify_name(self.notify_type)

    def non_fatal(self) -> ProtocolError:
        """Mark the error as ending only the exchange, not the IKE SA (RFC 7296 §1.3)."""
        self.fatal = False
        return self


class InvalidSyntax(ProtocolError):
    """RFC 7296 §3.10.1 INVALID_SYNTAX: a message missing required payloads or malformed."""

    notify_type = INVALID_SYNTAX


class UnsupportedCriticalPayload(ProtocolError, MalformedMessage):
    """RFC 7296 §2.5: a payload we do not know with the critical bit set.

    Raised by the codec (a message we cannot process, hence a MalformedMessage)
    and answered by the IKE SA (hence a ProtocolError).  The notification data is
    the one-octet payload type (§3.10.1).
    """

    notify_type = UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unsupported critical payload type {payload_type}",
            notify_data=bytes([payload_type & 0xFF]),
        )
        self.payload_type = payload_type


class NoProposalChosen(ProtocolError):
    """RFC 7296 §2.7: none of the offered proposals is acceptable."""

    notify_type = NO_PROPOSAL_CHOSEN


class InvalidKePayload(ProtocolError):
    """RFC 7296 §1.3 / §2.7: the KE payload's group is not the one we select.

    The notification data is the two-octet group number we want.
    """

    notify_type = INVALID_KE_PAYLOAD

    def __init__(self, reason: str, group: int) -> None:
        super().__init__(reason, notify_data=group.to_bytes(2, "big"))
        self.group = group


class AuthenticationFailed(ProtocolError):
    """RFC 7296 §2.15: the AUTH payload or the identity did not verify."""

    notify_type = AUTHENTICATION_FAILED


class TsUnacceptable(ProtocolError):
    """RFC 7296 §2.9: no part of the proposed traffic selectors fits our policy."""

    notify_type = TS_UNACCEPTABLE


class ChildSaNotFound(ProtocolError):
    """RFC 7296 §2.25 CHILD_SA_NOT_FOUND (used by rekeying)."""

    notify_type = CHILD_SA_NOT_FOUND


class TemporaryFailure(ProtocolError):
    """RFC 7296 §2.25 TEMPORARY_FAILURE: try again later (e.g. collision)."""

    notify_type = TEMPORARY_FAILURE


class InvalidSpi(ProtocolError):
    """RFC 7296 §3.10.1 INVALID_SPI."""

    notify_type = INVALID_SPI


class PeerError(Exception):
    """The peer answered our request with an error notify (RFC 7296 §2.21)."""

    def __init__(self, notify_type: int, reason: str) -> None:
        super().__init__(reason)
        self.notify_type = notify_type
        self.reason = reason
