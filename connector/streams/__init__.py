"""The only code that touches Kafka: dispatch (with its batching producer and group-membership
guard), the idempotency ledger, the callback endpoint, the correlator, the MO pollers, opt-outs,
and the durable publisher the inbound side shares."""
