"""The watchdog's schema: its frozen migrations, in order (`gl_common.migrations` runs them), and the
table objects every query of the watchdog uses.

Where it sits: `watchdog.store.WatchdogStore.open()` applies `SCHEMA` at start-up through
`gl_common.db.Database.migrate`, before anything else touches the database; `watchdog.store`,
`watchdog.leases`, `watchdog.listing` and `watchdog.approvals` query the table objects below, which are
`SCHEMA.metadata()`: what the migrations declare, so a table is written once, in the migration that
creates it. Each `m000N_*.py` module holds one released migration and is never edited; a schema change
is a new module appended to `SCHEMA`.

Tables:

    incidents          one row per incident; at most one *open* incident per execution_id, enforced
                       by the partial unique index `uq_incidents_open_execution` (not check-then-insert)
    alert_deliveries   one row per alert episode (fingerprint + starts_at unique): the durable dedup
                       key, with a digest of the episode's labels (migration 3)
    audit_log          every state change, step, prompt, decision and action, before and after
    approvals          approval prompts: plan, summary, state, single-use token nonce, expiry
    actions            playbook actions; the idempotency key is unique, so an action runs at most once
    rate_events        timestamps of rate-limited events (agent restarts, ...) and breaker trips
    job_leases         who runs the job of an incident in a transient state, until when, and how
                       often it was lost (migration 2; queried by `watchdog.leases` only)
    api_tokens         named API tokens: name, role, SHA-256 of the token, who made it, revoked,
                       last used (migration 4; queried by `watchdog.tokens` only); approvals gained
                       `votes`/`vote_count`, the approvers of a two-person approval so far
    (migration 5)      incidents gained `alert_links` (the alert's runbook_url, summary, description,
                       generatorURL); approvals `slack_channel`/`slack_ts` (the bot's message)
    (migration 6)      incidents gained `held_kind`/`held_by`: what holds an open incident (a silence,
                       a maintenance window, a failed silence check), kept with its `suppressed` entry
    (migration 7)      incidents gained `page_open`: the escalated incident's page is open, kept with
                       the audit entries that open and close it (`page_change`), indexed with the id

Versions are kept in `gl_schema_migrations` (component `watchdog`). Databases from before the shared
runner kept them in `schema_migrations (version, description, applied_at)`: the runner adopts those rows
on its first start (`LegacyTable`) and leaves the table in place. Replicas starting together serialise
on the same PostgreSQL advisory lock key the watchdog's own runner took.
"""

from __future__ import annotations

from typing import Final

from gl_common.migrations import LegacyTable, Schema
from watchdog.migrations import (
    m0001_initial,
    m0002_job_leases,
    m0003_labels_digest,
    m0004_identity,
    m0005_links_slack,
    m0006_held,
    m0007_page_open,
)

SCHEMA: Final = Schema(
    component="watchdog",
    migrations=(
        m0001_initial.MIGRATION,
        m0002_job_leases.MIGRATION,
        m0003_labels_digest.MIGRATION,
        m0004_identity.MIGRATION,
        m0005_links_slack.MIGRATION,
        m0006_held.MIGRATION,
        m0007_page_open.MIGRATION,
    ),
    lock_key=0x67_6C_77_64_6D_69_67,  # "glwdmig": the key the watchdog's own runner used before
    legacy=LegacyTable("schema_migrations", description_column="description"),
)

# The statuses the check constraint of `incidents` allows (a migration that changes them updates this).
INCIDENT_STATUSES: Final = m0001_initial.INCIDENT_STATUSES
TERMINAL_INCIDENT_STATUSES: Final = ("resolved", "escalated", "closed")
# What can hold an incident (`incidents.held_kind`, the label of `gl_watchdog_incidents_held`).
HELD_KINDS: Final = ("silence", "maintenance", "check_failure")
held_of: Final = m0006_held.held_of
# The audit entries that open and close an escalated incident's page, and what each does to it.
PAGE_ENTRIES: Final = m0007_page_open.PAGE_ENTRIES
page_change: Final = m0007_page_open.page_change

metadata: Final = SCHEMA.metadata()

incidents: Final = metadata.tables["incidents"]
alert_deliveries: Final = metadata.tables["alert_deliveries"]
audit_log: Final = metadata.tables["audit_log"]
approvals: Final = metadata.tables["approvals"]
actions: Final = metadata.tables["actions"]
rate_events: Final = metadata.tables["rate_events"]
job_leases: Final = metadata.tables["job_leases"]
api_tokens: Final = metadata.tables["api_tokens"]
