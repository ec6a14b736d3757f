"""Exceptions of the foundation that both services' own trees build on.

Where it sits: raised by `gl_common.db` (and so by each service's store). A service subclasses them
into its own tree, e.g. `orchestrator_core.errors.StoreError(OrchestratorError, gl_common.errors.StoreError)`,
and hands its subclasses to `gl_common.db.Database`, so that its callers catch one tree::

    StoreError              the database refused or failed an operation (a constraint, bad data, a bug)
    └── StoreUnavailable    the database cannot be reached, did not answer within the timeout, or the
                            store is closed: worth retrying later
"""

from __future__ import annotations


class StoreError(Exception):
    """The database refused or failed an operation."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time, or the store is closed."""
