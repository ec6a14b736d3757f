"""Retry and timeout policy arithmetic and seeded jitter.

Where it sits: `nodes.NodeRunner` asks `retry_delay` how long to wait before the next attempt and
`is_retryable` whether an exception may be retried; `checkpoints.py` uses `backoff_delay` for failed
checkpoint saves. Sleeps go through the injected
`gl_common.clock.Clock` (tests pass a fake one whose `sleep` returns at once and records the delay),
so ten-second backoffs are tested in microseconds.

Delays (attempt n = the attempt that just failed, 1-based), capped at `max_delay`:
`exponential` base_delay * 2**(n-1); `linear` base_delay * n; `fixed` base_delay. With `jitter` the
delay is scaled by a factor in [0.5, 1.0) ("equal jitter": never below half, so backoff still grows).
In `deterministic_mode` the jitter generator is seeded from the execution id and node id, so a replay
waits exactly as long as the original.
"""

from __future__ import annotations

import hashlib
import random

from orchestrator_core.dag import RetryPolicy
from orchestrator_core.errors import NodeTimeout, RetryableAgentError


def jitter_rng(execution_id: str, node_id: str, deterministic: bool) -> random.Random:
    """The jitter generator of one node: seeded from the execution id in deterministic mode."""
    if not deterministic:
        return random.Random()
    seed = hashlib.sha256(f"{execution_id}\x00{node_id}".encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def retry_delay(policy: RetryPolicy, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) failed, before the next one."""
    if failed_attempt < 1:
        raise ValueError("failed_attempt is 1-based")
    if policy.strategy == "exponential":
        delay = policy.base_delay * (2.0 ** min(failed_attempt - 1, 62))
    elif policy.strategy == "linear":
        delay = policy.base_delay * failed_attempt
    else:
        delay = policy.base_delay
    delay = min(delay, policy.max_delay)
    if policy.jitter:
        delay *= 0.5 + (rng or random.Random()).random() / 2
    return delay


def exception_names(exc: BaseException) -> list[str]:
    """The names of the exception's class and all its bases (MRO), most specific first."""
    return [cls.__name__ for cls in type(exc).__mro__ if cls is not object]


def is_retryable(policy: RetryPolicy, exc: BaseException) -> bool:
    """Whether a failed attempt may be retried (attempts left are the caller's business).

    `RetryableAgentError` (including `AgentRestarted`) is always retryable; any other exception is
    retryable when its class name or a base class name is listed in `retryable_exceptions`
    (so `ConnectionError` matches `ConnectionRefusedError`, and `TimeoutError` matches `NodeTimeout`).
    """
    if isinstance(exc, RetryableAgentError):
        return True
    if not policy.retryable_exceptions:
        return False
    wanted = set(policy.retryable_exceptions)
    return any(name in wanted for name in exception_names(exc))


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff without jitter for infrastructure retries (checkpoint saves)."""
    return min(cap, base * (2.0 ** min(max(attempt - 1, 0), 62)))


def describe_error(exc: BaseException) -> str:
    """`ClassName: message` as stored in traces (`NodeTimeout` keeps its own message)."""
    if isinstance(exc, NodeTimeout):
        return f"NodeTimeout: {exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
