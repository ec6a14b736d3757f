"""Compensation: running a node's `compensation` agent to undo (or make up for) what it did.

Where it sits: `nodes.NodeRunner` compensates a node that timed out with `on_timeout=compensate`
(`compensate_node`); `executor.Executor.run` compensates a failed run with `on_failure=compensate`
(`compensate_run`: every completed node with a compensation agent, in reverse completion order). A
compensation agent gets the node's params, the run's input, the node's upstream outputs and its own
output (`AgentContext.node_output`, `compensating=True`). A failed compensation is logged and noted in
the result; the others still run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator_core.agents import AgentContext
from orchestrator_core.dag import Node
from orchestrator_core.policies import describe_error
from orchestrator_core.run_state import RunState


class Compensator:
    """Runs the compensation agents of one run."""

    __slots__ = ("run",)

    def __init__(self, run: RunState) -> None:
        self.run = run

    async def compensate_run(self) -> list[str]:
        """Compensate completed nodes in reverse completion order; what was done, per node."""
        done = []
        for node_id in reversed(self.run.completion_order):
            node = self.run.dag.nodes[node_id]
            if node.compensation is None:
                continue
            note = await self.compensate_node(node, self.run.outputs.get(node_id))
            done.append(node_id if note.startswith("compensated") else f"{node_id} ({note})")
        return done

    async def compensate_node(self, node: Node, output: Any) -> str:
        """Run the node's compensation agent; a note of what happened."""
        run = self.run
        if node.compensation is None:
            return "no compensation agent"
        ctx = AgentContext(
            execution_id=run.execution_id,
            dag_id=run.dag.dag_id,
            node_id=node.node_id,
            agent_id=node.compensation,
            attempt=1,
            params=node.params,
            input_data=run.input_data,
            upstream={dep: run.outputs.get(dep) for dep in node.depends_on},
            deadline=None,
            observer=run.observer,
            now=run.clock.now,
            node_output=output,
            compensating=True,
        )
        try:
            await run.registry.invoke(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed compensation is reported, the others still run
            run.log(
                "ERROR",
                f"compensation {node.compensation} failed: {describe_error(exc)}",
                node_id=node.node_id,
                agent_id=node.compensation,
            )
            return f"compensation failed: {describe_error(exc)}"
        note = f"compensated by {node.compensation}"
        run.log("INFO", note, node_id=node.node_id, agent_id=node.compensation)
        return note
