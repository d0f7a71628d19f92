"""Sans-I/O AH, the IP Authentication Header (RFC 4302): integrity without confidentiality.

* :mod:`ipsecd.ah.header` — the AH header codec (RFC 4302 §2);
* :mod:`ipsecd.ah.mutable` — the IP header as the ICV sees it: mutable fields
  zeroed, predictable ones set to their value at the receiver (§3.3.3.1);
* :mod:`ipsecd.ah.sa` — one direction of an AH SA: sequence numbers, ICV,
  anti-replay with ESN (§3.3, §3.4), shaped like :mod:`ipsecd.esp.sa`.
"""
