"""Development tooling: simulators, local stack, dev, demo, bench, doc generators. Not the worker."""
