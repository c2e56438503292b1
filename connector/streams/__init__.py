"""The only code that touches Kafka (with ``app.py`` and the operator commands through it).

- ``plumbing``: group-less consumers, reading topics to their end, producing until acknowledged,
  the rebalance listener: written once, used by every stream below.
- ``dispatch`` (with ``batcher``, ``ledger``, ``membership``): sms.outbound -> providers ->
  sms.accepted / sms.failed / the DLQ / the retry topic.
- ``optouts``: the opt-out table, and its mirror to providers that keep opt-out lists.
- ``callbacks`` and ``pollers`` (with ``publish``): provider callbacks and polled MO into
  sms.receipts / sms.inbound / sms.optout.
- ``correlator``: receipts joined with sends into sms.delivery, and status polling.

Providers are reached only through their declared capabilities (``connector.providers``).
"""
