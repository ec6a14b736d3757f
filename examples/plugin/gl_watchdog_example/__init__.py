"""A template gl-watchdog plugin (examples/plugin/README.md).

    step.py      diagnostic step 20 `queue_backlog`: runs queued behind a full concurrency limit;
                 names the likely cause `queue_backlog`
    playbook.py  playbook `raise_concurrency`: raise the orchestrator's `max_concurrent_executions`
                 to a bounded target so the queue drains

Both import only `watchdog_sdk` (the plugin interfaces and clients) and pydantic, as a plugin should.
"""
