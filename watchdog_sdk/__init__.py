"""The shared lower layer of the watchdog side: what playbooks, diagnostic steps and the watchdog use.

Where it sits (`.importlinter`): above `gl_common`, below `playbooks` and the diagnostic steps (plugins
of the interfaces here) and below `watchdog` (the service that composes them). It imports neither of
those, nor `orchestrator_core`: the orchestrator is reached only through its REST API client.

    clients/      the outside systems: orchestrator (httpx), Prometheus, Kubernetes, Redis; `Clients`
    errors.py     the shared exception tree (clients convert their libraries' errors into it)
    constants.py  Redis keys, metric names, the alert name, Kubernetes labels
    diagnosis.py  the results of diagnosis: Finding (one per step), Diagnosis, StepStatus
    diagnostic_step.py  the diagnostic-step interface: DiagnosticStep, DiagnosticContext, DiagnosisState
    step_helpers.py     helpers for writing a step (findings from errors, log filters, PromQL quoting)
    playbook.py   the playbook interface: Playbook, PlaybookContext, typed Step/StepRequest, run_step
    outcomes.py   what a playbook answers with: Precheck, PlannedAction, ApplyResult, VerifyResult, Risk
    ledger.py     the action ledger protocol (and an in-memory one for dry runs)
    registry.py   an explicit registry of playbooks by name
"""
