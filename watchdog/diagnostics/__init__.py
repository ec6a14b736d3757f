"""Diagnostic steps 1-8 of the runbook `dag-execution-stuck.md`.

`runner.diagnose()` runs steps 1-3 in order, then 4-8 concurrently, each under its own timeout, and
returns a `Diagnosis`. A step never raises: a missing or failing backend yields a Finding with status
`unknown` or `error` and the reason.
"""
