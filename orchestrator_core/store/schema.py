"""The orchestrator's tables, as its migrations declare them.

Where it sits: the bottom of `orchestrator_core.store`; every repository module queries these table
objects. They are not written here: `orchestrator_core.migrations.SCHEMA.metadata()` replays the frozen
migrations, so a table is defined once, in the migration that created it (a test checks that a
migrated database has exactly these tables and columns).

    dags             one row per DAG version (definition as canonical JSON, content hash)
    executions       one row per run: status, owner, fencing token, chain head and length
    node_traces      per node of a run with checkpoints: status, timings, attempts, input hash
    checkpoints      per completed node of a run with checkpoints: output, input and output hashes
    provenance       per chain record of a run with checkpoints
    run_documents    per run without checkpoints: every trace and the whole chain as one document
    limit_overrides  the live limits every replica applies
    node_durations   per (dag, node, agent): the duration sketch of its successful runs
    running_nodes    per running node of a running run: attempt, start, last progress (owner's flush)
"""

from __future__ import annotations

from orchestrator_core.migrations import SCHEMA

metadata = SCHEMA.metadata()

dags = metadata.tables["dags"]
executions = metadata.tables["executions"]
node_traces = metadata.tables["node_traces"]
checkpoints = metadata.tables["checkpoints"]
provenance = metadata.tables["provenance"]
run_documents = metadata.tables["run_documents"]
limit_overrides = metadata.tables["limit_overrides"]
node_durations = metadata.tables["node_durations"]
running_nodes = metadata.tables["running_nodes"]

TRACE_COLUMNS = tuple(c.name for c in node_traces.columns)
CHECKPOINT_COLUMNS = tuple(c.name for c in checkpoints.columns)
PROVENANCE_COLUMNS = tuple(c.name for c in provenance.columns)
