"""The REST API's request models and the checks of request values, at the HTTP boundary.

Where it sits: `api.py`'s handlers validate request bodies with `validate(Model, data)` and query
parameters with `int_param`; both refuse bad input with `errors.BadRequest` naming the field (a 400,
never a 5xx). (Issue 10 makes these models, and response models beside them, the source of the
OpenAPI document too; today `openapi.py` spells out their schemas.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator_core.errors import BadRequest
from orchestrator_core.settings import MAX_CONCURRENT_EXECUTIONS_BOUND, MAX_PARALLEL_NODES_BOUND

ModelT = TypeVar("ModelT", bound=BaseModel)


class ExecutionOptionsModel(BaseModel):
    # Strict: "yes", "0" or 1 are refused rather than guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)

    checkpoint_enabled: bool = True
    deterministic_mode: bool = False


class ExecuteRequest(BaseModel):
    """`POST /dags/{dag_id}/execute`."""

    model_config = ConfigDict(extra="forbid")

    input_data: Any = None
    execution_options: ExecutionOptionsModel | None = None


class LimitsRequest(BaseModel):
    """`PUT /admin/limits`."""

    # Strict: `true` or "5" are refused (lax pydantic would read them as 1 and 5); same bounds as settings.
    model_config = ConfigDict(extra="forbid", strict=True)

    max_parallel_nodes: int | None = Field(None, ge=1, le=MAX_PARALLEL_NODES_BOUND)
    max_concurrent_executions: int | None = Field(None, ge=1, le=MAX_CONCURRENT_EXECUTIONS_BOUND)


def validate(model: type[ModelT], data: Any) -> ModelT:
    """`data` as `model`; `BadRequest` naming the first invalid field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = "must be a JSON object"  # not pydantic's "... or instance of LimitsRequest"
        raise BadRequest(f"{field or 'body'}: {message}", field=field) from None


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high] (`default` when absent or empty)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low} and {high}", field=name)
    return value
