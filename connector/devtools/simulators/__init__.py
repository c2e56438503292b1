"""Faithful provider simulators: real HTTP servers used by ``dev``, the tests and the benchmark.

``SIMULATORS`` maps a provider name to its simulator class; ``sms-connector simulate NAME`` runs
one alone. See ``simulators.base`` for fault injection and the ``/_sim/*`` admin endpoints.
"""

from __future__ import annotations

from connector.devtools.simulators.base import Faults, Simulator, Stats, run_simulator, serve
from connector.devtools.simulators.ogangi import OgangiSimulator
from connector.devtools.simulators.revio import RevIoSimulator
from connector.devtools.simulators.smpp_rest import SmppRestSimulator
from connector.devtools.simulators.thingspace import ThingSpaceSimulator

SIMULATORS: dict[str, type[Simulator]] = {s.name: s for s in (SmppRestSimulator, RevIoSimulator, OgangiSimulator,
                                                                 ThingSpaceSimulator)}

__all__ = ["SIMULATORS", "Faults", "Simulator", "Stats", "run_simulator", "serve"]
