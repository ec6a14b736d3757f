"""Diagnostic steps 1-8 of the runbook `dag-execution-stuck.md`, and the runner that runs them.

Each `step<N>_<name>` module is a plugin of the step interface in `watchdog_sdk.diagnostic_step`
(`STEP`, `NAME`, `async run(ctx, state) -> Finding`) and imports only `watchdog_sdk` and `gl_common`
(`.importlinter`). `runner.diagnose()` runs steps 1-3 in order, then 4-8 concurrently, each under its
own timeout, and returns a `Diagnosis` (`watchdog_sdk.diagnosis`); a step never raises: a missing or
failing backend yields a Finding with status `unknown` or `error` and the reason. `render` prints a
Diagnosis as JSON, Markdown or a terminal table.
"""
