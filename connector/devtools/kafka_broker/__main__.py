"""`python -m connector.devtools.kafka_broker` (`make kafka`): fetch the broker's jars now, say where they are."""

import sys

from connector.devtools.embedded_broker import BrokerUnavailable
from connector.devtools.kafka_broker import KAFKA_VERSION, fetch_jars

try:
    print(f"Apache Kafka {KAFKA_VERSION}: {fetch_jars()}")
except BrokerUnavailable as exc:
    sys.exit(str(exc))
