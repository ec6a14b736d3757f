"""The foundation both services stand on: nothing here knows about DAGs, alerts or incidents.

Where it sits: the lowest layer of the distribution. `orchestrator_core` and the watchdog side
(`watchdog_sdk`, `playbooks`, `watchdog`) import from it; it imports none of them (import-linter,
`.importlinter`). It holds what both services need in one implementation each: the clock (`clock`),
the store foundation (`db`, `errors`, `sqltypes`), the migration runner (`migrations`), and (as they
move here) bearer-token checks and HTTP error shaping.
"""
