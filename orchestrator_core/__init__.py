"""gl-watchdog's compact DAG orchestrator.

Topological levels with a barrier between them, per-node timeout and retry policies, checkpoints,
resume, cancel, a provenance chain, Prometheus metrics, and the REST API that the runbook's commands
call (`/api/v1/orchestrator/...`). This package imports neither `watchdog` nor `playbooks`.
"""

__version__ = "0.1.0"
