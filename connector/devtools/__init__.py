"""Development tooling: provider simulators, the local stack, ``dev``, demo traffic, the bench and its
peers, the embedded broker and the Apache Kafka test harness, doc and chart generators. Not the
worker: nothing outside this package imports it, and the image does not need its extras.
"""

import connector.providers  # noqa: F401  the tools load and document routes: each provider registers its settings
