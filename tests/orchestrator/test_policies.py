"""Retry delay arithmetic, seeded jitter and retryability by exception names."""

from __future__ import annotations

import pytest

from orchestrator_core.dag import RetryPolicy
from orchestrator_core.errors import AgentError, AgentRestarted, NodeTimeout
from orchestrator_core.policies import backoff_delay, exception_names, is_retryable, jitter_rng, retry_delay


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("exponential", [0.5, 1.0, 2.0, 4.0, 4.0]), ("linear", [0.5, 1.0, 1.5, 2.0, 2.5]), ("fixed", [0.5] * 5)],
)
def test_delays_per_strategy_capped(strategy: str, expected: list[float]) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=0.5, max_delay=4.0)  # type: ignore[arg-type]
    assert [retry_delay(policy, n) for n in range(1, 6)] == expected


def test_jitter_stays_within_half_and_full_delay_and_is_seeded() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter=True)
    first = [retry_delay(policy, n, jitter_rng("exec-1", "node", True)) for n in range(1, 8)]
    again = [retry_delay(policy, n, jitter_rng("exec-1", "node", True)) for n in range(1, 8)]
    other = [retry_delay(policy, n, jitter_rng("exec-2", "node", True)) for n in range(1, 8)]
    assert first == again and first != other
    for n, delay in enumerate(first, start=1):
        assert 0.5 * 2 ** (n - 1) <= delay < 2 ** (n - 1)


def test_retryable_by_class_or_base_class_name() -> None:
    policy = RetryPolicy(max_retries=1, retryable_exceptions=("ConnectionError", "TimeoutError"))
    assert is_retryable(policy, ConnectionRefusedError("x"))
    assert is_retryable(policy, NodeTimeout("slow"))  # NodeTimeout is a TimeoutError
    assert not is_retryable(policy, ValueError("x"))
    named = type("ServiceUnavailable", (AgentError,), {})
    assert is_retryable(RetryPolicy(retryable_exceptions=("ServiceUnavailable",)), named("503"))
    assert "OSError" in exception_names(ConnectionRefusedError())


def test_retryable_agent_errors_always_retry() -> None:
    assert is_retryable(RetryPolicy(), AgentRestarted("restarted"))
    assert not is_retryable(RetryPolicy(), AgentError("plain"))


def test_backoff_for_checkpoint_saves() -> None:
    assert [backoff_delay(n, 0.1, 0.5) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
