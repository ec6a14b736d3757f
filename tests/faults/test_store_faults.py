"""The store failing while a job saves what it did (issue 10): a diagnosis, a remediation and a
verification, on PostgreSQL with Redis (the production set-up).

Two ways to fail it. At the store's boundary: `store.transaction()` refuses (a pool timeout, the
database gone) from the moment the job has done its work until the test lifts it — the job's writes
are retried, then it reports and stops; its lease lapses and the reconciler takes the incident back,
retries it after a backoff and the incident ends resolved, with nothing done twice. And by a real
PostgreSQL connection kill (`pg_terminate_backend`) of the transaction that saves: the write is
tried again on a new connection and the job goes on without being taken back.

Every case ends with the incident final, within the documented bound of its job
(`Watchdog.transient_bound_seconds`, docs/architecture.md "Bounds on transient states"), in the
injected clock's time.
"""

from __future__ import annotations

from tests.faults.conftest import Rig


def _kinds(audit: list[object]) -> list[str]:
    return [entry.kind for entry in audit]  # type: ignore[attr-defined]


async def _store_down(rig: Rig) -> None:
    rig.faults.down = True


async def test_a_diagnosis_the_store_refuses_to_save_is_taken_back_and_diagnosed_again(rig: Rig) -> None:
    rig.diagnose.before_return = lambda: _store_down(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    rig.faults.down = False
    assert (await rig.incident(incident.id)).status == "diagnosing"  # the job reported and stopped
    assert rig.wd.metrics.job_save_failures.labels(job="diagnosis")._value.get() == 1
    assert (await rig.wd.reconciler.reconcile_once()).taken_back == []  # its lease has not lapsed yet

    final = await rig.until_final(incident.id)
    assert final.status == "resolved", final.summary
    assert rig.diagnose.calls == ["run-1", "run-1"] and rig.playbook.side_effects == 1
    assert _kinds(await rig.audit(incident.id)).count("job_lost") == 1
    assert rig.elapsed() <= rig.wd.transient_bound_seconds("diagnosis")


async def test_a_remediation_the_store_refuses_to_save_is_resumed_without_repeating_its_steps(
    rig: Rig,
) -> None:
    rig.playbook.after_apply = lambda: _store_down(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    rig.faults.down = False
    assert (await rig.incident(incident.id)).status == "remediating"
    assert rig.wd.metrics.job_save_failures.labels(job="remediation")._value.get() == 1

    final = await rig.until_final(incident.id)
    assert final.status == "resolved", final.summary
    assert rig.playbook.side_effects == 1  # the restart happened once; the retry skipped the done steps
    assert rig.playbook.applied == 2
    audit = _kinds(await rig.audit(incident.id))
    assert audit.count("job_lost") == 1 and audit.count("remediation_resumed") == 1
    assert rig.elapsed() <= rig.wd.transient_bound_seconds("remediation")


async def test_a_verification_the_store_refuses_to_save_is_verified_again_and_resolved(rig: Rig) -> None:
    rig.playbook.after_verify = lambda: _store_down(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    rig.faults.down = False
    assert (await rig.incident(incident.id)).status == "verifying"

    final = await rig.until_final(incident.id)
    assert final.status == "resolved", final.summary
    assert rig.playbook.verified == 2 and rig.playbook.side_effects == 1 and rig.playbook.applied == 1
    assert _kinds(await rig.audit(incident.id)).count("job_lost") == 1
    assert rig.elapsed() <= rig.wd.transient_bound_seconds("verification")


async def test_a_diagnosis_that_runs_out_of_attempts_is_escalated_with_the_reason(rig: Rig) -> None:
    incident = await rig.open_and_diagnose()
    rig.diagnose.before_return = lambda: _store_down(rig)
    for _ in range(3):  # every attempt's save is refused
        await rig.settle()
        rig.faults.down = False
        rig.clock.advance(31)
        await rig.wd.reconciler.reconcile_once()  # taken back
        rig.diagnose.before_return = lambda: _store_down(rig)
        rig.clock.advance(31 * 8)
        await rig.wd.reconciler.reconcile_once()  # retried (or escalated after the third)
    await rig.settle()
    final = await rig.incident(incident.id)
    assert final.status == "escalated"
    assert "did not finish in 3 attempt(s)" in (final.summary or "")
    assert "stopped renewing its lease" in (final.summary or "")
    assert [m.incident_id for m in rig.notifier.escalations] == [incident.id]
    assert rig.playbook.side_effects == 0


# -- a real connection kill: the write goes again on a new connection -------------------------------


async def _kill_the_next_transaction(rig: Rig) -> None:
    rig.faults.kill_next = 1


async def test_a_killed_connection_while_a_diagnosis_saves_is_survived_by_a_retry(rig: Rig) -> None:
    rig.diagnose.before_return = lambda: _kill_the_next_transaction(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    final = await rig.incident(incident.id)
    assert rig.faults.killed == 1
    assert final.status == "resolved", final.summary
    assert rig.diagnose.calls == ["run-1"] and "job_lost" not in _kinds(await rig.audit(incident.id))


async def test_a_killed_connection_while_a_remediation_saves_is_survived_by_a_retry(rig: Rig) -> None:
    rig.playbook.after_apply = lambda: _kill_the_next_transaction(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    final = await rig.incident(incident.id)
    assert rig.faults.killed == 1
    assert final.status == "resolved", final.summary
    assert rig.playbook.side_effects == 1 and rig.playbook.applied == 1
    assert "job_lost" not in _kinds(await rig.audit(incident.id))


async def test_a_killed_connection_while_a_verification_saves_is_survived_by_a_retry(rig: Rig) -> None:
    rig.playbook.after_verify = lambda: _kill_the_next_transaction(rig)
    incident = await rig.open_and_diagnose()
    await rig.settle()
    final = await rig.incident(incident.id)
    assert rig.faults.killed == 1
    assert final.status == "resolved", final.summary
    assert rig.playbook.verified == 1 and "job_lost" not in _kinds(await rig.audit(incident.id))
