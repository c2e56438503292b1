"""The only code that touches Kafka: the dispatch processor (and, later, inbound streams)."""
