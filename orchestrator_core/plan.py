"""Run plans: what every run of one DAG version shares, prepared once per version.

Where it sits: `engine.Engine` owns one `RunPlans` and hands each executor the plan of the DAG
version it runs (`RunPlans.get(dag)`); the executor's level scheduler walks `levels`, and its node
runner hashes each node's input with `input_hashers` (`hashing.InputHasher`). `queue_resume` uses a
plan's levels to say which nodes a queued resume will run.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator_core.dag import DagDefinition, Node
from orchestrator_core.hashing import InputHasher

PLAN_CACHE_SIZE = 256  # DAG versions whose plans are kept (the store caches as many definitions)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A DAG version's levels (topological, node ids sorted), each node's dependencies, each node's
    input hasher (the parts of its input-hash document that do not change from run to run), and each
    node's key in the node-duration history, `(dag_id, node_id, agent_id)` (one tuple for every run:
    a completion's lookup finds it by identity, and none is built per node), and every node with its
    level index (what a run builds its node states from)."""

    dag: DagDefinition
    levels: tuple[tuple[str, ...], ...]
    dependencies: dict[str, frozenset[str]]
    input_hashers: dict[str, InputHasher]
    history_keys: dict[str, tuple[str, str, str]]
    placed: tuple[tuple[Node, int], ...]  # every node with its level index, in level order

    @classmethod
    def of(cls, dag: DagDefinition) -> RunPlan:
        levels = tuple(tuple(level) for level in dag.levels())
        return cls(
            dag=dag,
            levels=levels,
            dependencies={node_id: frozenset(node.depends_on) for node_id, node in dag.nodes.items()},
            input_hashers={
                node_id: InputHasher(node.agent_id, node.params, node.depends_on)
                for node_id, node in dag.nodes.items()
            },
            history_keys={
                node_id: (dag.dag_id, node_id, node.agent_id) for node_id, node in dag.nodes.items()
            },
            placed=tuple(
                (dag.nodes[node_id], index) for index, level in enumerate(levels) for node_id in level
            ),
        )

    def level_lists(self) -> list[list[str]]:
        """The levels as fresh lists (callers may keep or change them)."""
        return [list(level) for level in self.levels]


class RunPlans:
    """The plans of recently run DAG versions, by (dag_id, version); at most `size` of them.

    A plan is reused only for the very definition object it was made from (the store hands out one
    object per stored version), so a definition that differs under the same version never reuses it.
    """

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self._size = size
        self._plans: dict[tuple[str, int], RunPlan] = {}

    def get(self, dag: DagDefinition) -> RunPlan:
        key = (dag.dag_id, dag.version)
        plan = self._plans.get(key)
        if plan is None or plan.dag is not dag:
            if plan is None and len(self._plans) >= self._size:
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = RunPlan.of(dag)
        return plan
