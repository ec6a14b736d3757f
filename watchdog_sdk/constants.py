"""Names shared across the watchdog: Redis keys, metric names, the alert name, API paths.

Read by the Redis client (`watchdog_sdk.clients.redis`), the sweeps (leader key), the diagnostic steps
(PromQL over the orchestrator's metric names), the intake (alert name) and the watchdog's metrics
module. The Redis keys mirror what the orchestrator writes (docs/architecture.md, "Redis keys").
"""

from __future__ import annotations

from typing import Final

# -- Redis keys -------------------------------------------------------------------------------------

LOCK_PREFIX: Final = "gl:orchestrator:lock:"
LOCK_SCAN_PATTERN: Final = LOCK_PREFIX + "*"
FENCE_KEY: Final = "gl:orchestrator:fence"
HEARTBEAT_PREFIX: Final = "gl:orchestrator:heartbeat:"
LEADER_KEY: Final = "gl:watchdog:leader"


def lock_key(execution_id: str) -> str:
    """Redis key of the ownership lock of one execution."""
    return LOCK_PREFIX + execution_id


def heartbeat_key(replica_id: str) -> str:
    """Redis key of one orchestrator replica's heartbeat."""
    return HEARTBEAT_PREFIX + replica_id


def execution_id_from_lock_key(key: str) -> str:
    """The execution id inside a lock key (inverse of `lock_key`)."""
    if not key.startswith(LOCK_PREFIX):
        raise ValueError(f"not a lock key: {key!r}")
    return key[len(LOCK_PREFIX) :]


# -- the alert --------------------------------------------------------------------------------------

ALERT_NAME: Final = "OrchestratorExecutionTimeout"
ORCHESTRATOR_API_PREFIX: Final = "/api/v1/orchestrator"

# -- orchestrator metric names (the contract the runbook's PromQL runs against) ---------------------

M_DAG_EXECUTION_DURATION: Final = "gl_orchestrator_dag_execution_duration_seconds"
M_EXECUTION_TIMEOUT: Final = "gl_orchestrator_execution_timeout_seconds"
M_ACTIVE_EXECUTIONS: Final = "gl_orchestrator_active_executions"
M_QUEUED_EXECUTIONS: Final = "gl_orchestrator_queued_executions"
M_MAX_CONCURRENT_EXECUTIONS: Final = "gl_orchestrator_max_concurrent_executions"
M_NODE_EXECUTION_DURATION: Final = "gl_orchestrator_node_execution_duration_seconds"
M_CHECKPOINT_OPERATIONS: Final = "gl_orchestrator_checkpoint_operations_total"
M_NODE_TIMEOUTS: Final = "gl_orchestrator_node_timeouts_total"
M_NODE_RETRIES: Final = "gl_orchestrator_node_retries_total"
M_AGENT_CALL_DURATION: Final = "gl_orchestrator_agent_call_duration_seconds"
M_DB_POOL_ACTIVE: Final = "gl_db_pool_active_connections"
M_DB_POOL_PENDING: Final = "gl_db_pool_pending_connections"
ORCHESTRATOR_SERVICE_LABEL: Final = "orchestrator-service"

# The shipped alert expression (see docs/architecture.md for why it differs from the runbook's).
STUCK_EXPRESSION: Final = (
    f'{M_DAG_EXECUTION_DURATION}{{status="running"}}'
    f" > on(dag_id, execution_id) group_left {M_EXECUTION_TIMEOUT}"
)

# -- Kubernetes labels ------------------------------------------------------------------------------

AGENT_LABEL: Final = "agent-id"
ORCHESTRATOR_APP_SELECTOR: Final = "app=orchestrator-service"
ORCHESTRATOR_DEPLOYMENT: Final = "orchestrator-service"
RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"

# -- watchdog metric names --------------------------------------------------------------------------

W_ALERTS_RECEIVED: Final = "gl_watchdog_alerts_received_total"
W_ALERTS_REJECTED: Final = "gl_watchdog_alerts_rejected_total"
W_ALERT_CONFLICTS: Final = "gl_watchdog_alert_conflicts_total"
W_INTAKE_SHED: Final = "gl_watchdog_intake_shed_total"
W_INCIDENTS_OPENED: Final = "gl_watchdog_incidents_opened_total"
W_OPEN_INCIDENTS: Final = "gl_watchdog_open_incidents"
W_INCIDENTS_HELD: Final = "gl_watchdog_incidents_held"
W_DIAGNOSES: Final = "gl_watchdog_diagnoses_total"
W_DIAGNOSIS_DURATION: Final = "gl_watchdog_diagnosis_duration_seconds"
W_DIAGNOSTIC_STEPS: Final = "gl_watchdog_diagnostic_steps_total"
W_REMEDIATIONS: Final = "gl_watchdog_remediations_total"
W_APPROVALS: Final = "gl_watchdog_approvals_total"
W_AUTH_FAILURES: Final = "gl_watchdog_auth_failures_total"
W_PENDING_APPROVALS: Final = "gl_watchdog_pending_approvals"
W_SWEEPS: Final = "gl_watchdog_sweeps_total"
W_SILENCE_CHECKS: Final = "gl_watchdog_silence_checks_total"
W_IS_LEADER: Final = "gl_watchdog_is_leader"
W_DIAGNOSIS_QUEUE: Final = "gl_watchdog_diagnosis_queue"
W_DIAGNOSES_DEFERRED: Final = "gl_watchdog_diagnoses_deferred_total"
W_JOB_SAVE_FAILURES: Final = "gl_watchdog_job_save_failures_total"
W_JOBS_RECONCILED: Final = "gl_watchdog_jobs_reconciled_total"
W_DEPENDENCY_UP: Final = "gl_watchdog_dependency_up"
W_PLUGIN_PROBLEMS: Final = "gl_watchdog_plugin_problems"
W_NOTIFICATIONS: Final = "gl_watchdog_notifications_total"
W_CIRCUIT_BREAKER_OPEN: Final = "gl_watchdog_circuit_breaker_open"
W_OLDEST_PENDING_APPROVAL_AGE: Final = "gl_watchdog_oldest_pending_approval_age_seconds"
W_APPROVALS_PAST_EXPIRY: Final = "gl_watchdog_approvals_past_expiry"
W_TIME_TO_DETECT: Final = "gl_watchdog_time_to_detect_seconds"
W_TIME_TO_DIAGNOSE: Final = "gl_watchdog_time_to_diagnose_seconds"
W_TIME_TO_REMEDIATE: Final = "gl_watchdog_time_to_remediate_seconds"
W_TIME_TO_CLOSE: Final = "gl_watchdog_incident_time_to_close_seconds"
W_TIME_TO_DECIDE: Final = "gl_watchdog_time_to_decide_seconds"
