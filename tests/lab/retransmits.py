"""The pings a peer's own retransmission may cost, when the request it repeated had been
answered in time.

strongSwan 5.9 reauthenticating break-before-make sends its new IKE_SA_INIT while the
same worker thread still tears the old IKE SA down, and files the new IKE SA only after
that. An answer arriving in between (ours takes well under a millisecond) finds no IKE SA
and is dropped without a log line; charon sends the request again after its retransmit
timeout, and the tunnel stays down meanwhile. Seen in CI under load: ipsecd logged its
IKE_SA_INIT response 0.5 ms after charon's request, charon logged nothing until its
retransmission one second later. That second is charon's; a test may allow the pings it
costs, but only for a retransmission of a request that ipsecd had answered before it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime

from tests.lab.strongswan import Charon

_RESPONSE = re.compile(r"^sending \S+ response (\d+) ")


def responses_sent(log_text: str) -> list[tuple[float, int]]:
    """(epoch seconds, message ID) of every IKE response in ipsecd's JSON log (debug)."""
    sent = []
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match = _RESPONSE.match(str(record.get("event", "")))
        if match and "timestamp" in record:
            when = datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
            sent.append((when.timestamp(), int(match.group(1))))
    return sent


def charon_retransmit_allowance(
    ipsecd_log: str, charon: Charon, since: float, interval: float
) -> tuple[int, list[tuple[float, int]]]:
    """Pings (one every ``interval`` seconds) that charon's retransmissions after ``since``
    may have cost, counting only those of requests ipsecd had answered within charon's
    retransmit timeout; and the retransmissions of requests it had *not* answered."""
    answers = responses_sent(ipsecd_log)
    timeout = charon.retransmit_timeout
    allowance = 0
    unanswered = []
    for when, mid in charon.first_retransmits(since):
        # The logs' clocks are the same, their rounding not (charon: milliseconds).
        if any(when - timeout - 0.05 <= at < when and m == mid for at, m in answers):
            allowance += math.ceil(timeout / interval)
        else:
            unanswered.append((when, mid))
    return allowance, unanswered
