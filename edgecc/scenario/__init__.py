"""Scenarios: reproducible straggler experiments (pure parts: spec, behaviour models, reports).

Imports only the standard library and numpy; report plotting loads matplotlib lazily.
"""

from edgecc.scenario.latency import FieldError, WorkerBehaviour, no_behaviour
from edgecc.scenario.report import RequestRecord, SchemeSummary, summarize, write_report
from edgecc.scenario.spec import Scenario, WorkerSpec, load_scenario

__all__ = [
    "FieldError", "RequestRecord", "Scenario", "SchemeSummary", "WorkerBehaviour", "WorkerSpec",
    "load_scenario", "no_behaviour", "summarize", "write_report",
]
