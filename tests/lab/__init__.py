"""The namespace test harness: topologies, ipsecd and strongSwan runners, captures, waits.

Lives beside the tests, not in the ``ipsecd`` package: no gateway needs it.  The demo's
own namespace pieces are in :mod:`ipsecd.cli.sites`, which the topology builds on.
"""
