"""sms-connector: a bridge between Kafka topics and SMS providers' HTTP APIs.

Outbound: consume ``sms.outbound``, call a provider, publish exactly one terminal record
(``sms.outbound.accepted`` / ``sms.outbound.failed`` / ``sms.outbound.dlq``) per input.
Inbound: delivery reports and mobile-originated messages into ``sms.delivery`` / ``sms.inbound``.
"""

__version__ = "0.1.0"
