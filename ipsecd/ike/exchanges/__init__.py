"""One module per IKEv2 exchange (strongSwan's ``sa/ikev2/tasks``), and the responder dispatch.

* :mod:`.sa_init` — IKE_SA_INIT (RFC 7296 §1.2): proposals, KE, nonces, NAT detection
* :mod:`.auth` — IKE_AUTH with the first CHILD_SA (§1.2, §2.15)
* :mod:`.create_child` — CREATE_CHILD_SA for more CHILD_SAs and the CHILD_SA rekey responder
* :mod:`.rekey` — rekey initiators and the IKE SA rekey responder (§1.3.2, §1.3.3, §2.8)
* :mod:`.informational` — Delete and liveness checks (§1.4)

The IKE SA (:mod:`ipsecd.ike.sa`) does not import these modules: the manager hands
it :data:`RESPONDERS`, so the imports run one way (exchanges → sa).
"""

from __future__ import annotations

from collections.abc import Mapping

from ipsecd.ike.constants import ExchangeType
from ipsecd.ike.exchanges import auth, create_child, informational, rekey, sa_init
from ipsecd.ike.message import Message
from ipsecd.ike.payloads import Payload
from ipsecd.ike.sa import IkeSa, Responder


def respond_create_child_sa(sa: IkeSa, message: Message, now: float) -> list[Payload]:
    """CREATE_CHILD_SA: an IKE SA rekey (§1.3.2) or a CHILD_SA, new or rekeyed (§1.3.1, §1.3.3)."""
    if rekey.is_ike_rekey(message):
        return rekey.respond_ike_rekey(sa, message, now)
    return create_child.respond(sa, message, now)


#: The responder of each exchange type; requests of other types are dropped and counted.
RESPONDERS: Mapping[int, Responder] = {
    ExchangeType.IKE_SA_INIT: sa_init.respond,
    ExchangeType.IKE_AUTH: auth.respond,
    ExchangeType.CREATE_CHILD_SA: respond_create_child_sa,
    ExchangeType.INFORMATIONAL: informational.respond,
}
