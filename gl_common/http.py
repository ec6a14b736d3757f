"""HTTP boundary helpers for the services' aiohttp apps: JSON errors, request bodies, model validation.

Where it sits: below both services' REST APIs (`orchestrator_core.api`, `watchdog.api` and `watchdog.web`).
`gl_common.openapi.RouteTable` validates every request with these helpers before its handler runs;
handlers raise `ApiError` for refusals of their own; the app's outermost middleware
(`error_middleware`) turns `ApiError` and aiohttp's HTTP exceptions into the JSON error shape
`{"error": <code>, "detail": <message>, "field"?: <the offending part>}`. Authentication is not here
(each service's auth middleware runs before any handler, hence before any validation or lookup).

What a request may hold, checked here so that a handler only ever sees valid values:

- a body of an accepted content type (415 otherwise), within the app's `client_max_size` (413);
- JSON that parses (400 `malformed_json`), nested at most `max_depth` levels and holding at most
  `max_values` values, with no lone surrogate (they cannot be stored as UTF-8; 400 `bad_request`);
- values that the route's pydantic models accept (400 naming the field, `field` in the body; a
  service may answer a body's refusal with another status and code, e.g. the watchdog's 422
  `invalid_payload`).

Listing cursors (`encode_cursor` / `decode_cursor`) are opaque to clients: base64url of the position
and a digest of the listing's filters, plus a checksum; a cursor that does not decode, was altered,
or belongs to other filters is a 400 naming `cursor`. They are not secrets: they only say where a
listing stopped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, ValidationError

from gl_common.documents import MAX_DEPTH, MAX_VALUES, json_shape_problem

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A service's own exceptions turned into ApiError (None: not one of them).
Translate = Callable[[web.Request, Exception], "ApiError | None"]

JSON_TYPE = "application/json"

HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """A refusal at the HTTP boundary: status, short code, message, and what the body adds."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra if field is None else {"field": field, **extra}

    def response(self) -> web.Response:
        return error_response(self.status, self.error, self.detail, headers=self.headers, **self.extra)


def bad_request(detail: str, field: str, error: str = "bad_request") -> ApiError:
    """A 400 naming the offending part of the request (`field`: a parameter name or a body path)."""
    return ApiError(400, error, detail, field=field)


def error_response(
    status: int, error: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """The JSON error shape every service answers with."""
    return web.json_response({"error": error, "detail": detail, **extra}, status=status, headers=headers)


def error_middleware(
    translate: Translate,
    *,
    internal_detail: str = "internal error; see the logs",
    error_codes: Mapping[int, str] | None = None,
) -> Any:
    """The outermost middleware: every failure becomes a JSON error.

    `translate` maps a service's own exceptions to `ApiError`s (it logs what deserves a log line);
    anything else unexpected is logged with its traceback and answered 500 without one. 405 answers
    carry the `Allow` header aiohttp computed from the routes of the path. `error_codes` replaces the
    short codes of aiohttp's HTTP errors (`HTTP_ERROR_CODES`) where a service documents others.
    """
    codes = {**HTTP_ERROR_CODES, **(error_codes or {})}

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as problem:
            return problem.response()
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(413, codes[413], f"request body over the limit ({exc.text or ''})".strip())
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_exception_response(request, exc, codes)
        except Exception as exc:
            translated = translate(request, exc)
            if translated is not None:
                return translated.response()
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal_error", internal_detail)

    return errors


def _http_exception_response(
    request: web.Request, exc: web.HTTPException, codes: Mapping[int, str]
) -> web.Response:
    code = codes.get(exc.status, "http_error")
    detail = exc.reason
    headers: dict[str, str] = {}
    if exc.status == 404:
        detail = f"no route {request.method} {request.path}"
    elif exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        detail = f"method {request.method} not allowed on {request.path}"
        if allowed:
            detail += f" (allowed: {', '.join(allowed)})"
        headers["Allow"] = ",".join(allowed)
    return error_response(exc.status, code, detail, headers=headers or None)


# -- request bodies ---------------------------------------------------------------------------------


async def read_body(request: web.Request, accepted: Iterable[str] = (JSON_TYPE,)) -> tuple[bytes, str]:
    """The raw body and its content type; an empty (or blank) body is `b""`. 415 on a type not in
    `accepted`; aiohttp raises 413 past the app's `client_max_size`."""
    body = await request.read()
    if not body.strip():
        return b"", ""
    ctype = request.content_type.lower()
    accepted = tuple(accepted)
    if ctype not in accepted:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be {' or '.join(accepted)}, not {ctype or 'missing'}",
        )
    return body, ctype


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """The JSON value of a request body; 400 when malformed, too deep or large, or not storable."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request(f"request body nested deeper than {max_depth} levels", "") from None
    problem = json_shape_problem(value, max_depth=max_depth, max_values=max_values)
    if problem is not None:
        raise bad_request(f"request body {problem}", "")
    return value


# -- models -----------------------------------------------------------------------------------------


def validate(
    model: type[ModelT], data: Any, *, where: str = "body", status: int = 400, error: str = "bad_request"
) -> ModelT:
    """`data` as `model`; a 400 naming the first invalid field otherwise (`where` names the part of
    the request when the problem is the whole value, e.g. "body"; `status` and `error` replace the
    400's status and short code)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where, status=status, error=error) from None


def validation_error(
    exc: ValidationError, where: str = "body", *, status: int = 400, error: str = "bad_request"
) -> ApiError:
    """The 400 for pydantic's first error: `<field>: <message>`, `field` the dotted path. A value
    outside a set of choices is quoted (shortened), so the answer says which value was refused."""
    first = exc.errors(include_url=False)[0]
    loc = first["loc"]
    # A query parameter is named as given (`status`, not `status.1` for its second value).
    field = str(loc[0]) if where == "query" and loc else ".".join(str(part) for part in loc)
    message = first["msg"]
    if first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a JSON object"  # not pydantic's "... or instance of LimitsRequest"
    elif first["type"] == "extra_forbidden":
        message = "is not a known field" if where == "body" else "is not a known parameter"
    elif first["type"] == "missing":
        message = "is required"
    elif first["type"] in ("enum", "literal_error"):
        message = f"{_shortened(first.get('input'))} is not allowed: {message}"
    return ApiError(status, error, f"{field or where}: {message}", field=field)


def _shortened(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def query_values(query: MultiMapping[str], list_fields: Iterable[str] = ()) -> dict[str, Any]:
    """A query string as a dict for a model: one value per name, except `list_fields`, whose values
    may repeat (`?status=a&status=b`) or be comma-separated (`?status=a,b`). A repeated name that is
    not a list field is refused (400), as is an empty value: a parameter is given or left out."""
    lists = set(list_fields)
    values: dict[str, Any] = {}
    for name in dict.fromkeys(query.keys()):
        given = query.getall(name)
        if any(value == "" for value in given):
            raise bad_request(f"query parameter {name} must not be empty (leave it out instead)", name)
        if name in lists:
            values[name] = [part for value in given for part in value.split(",")]
        elif len(given) > 1:
            raise bad_request(f"query parameter {name} may be given once", name)
        else:
            values[name] = given[0]
    return values


def json_model_response(model: BaseModel, status: int = 200) -> web.Response:
    """A response shaped by its model (the model's serialisation is the documented schema)."""
    return web.json_response(model.model_dump(mode="json"), status=status)


# -- listing cursors --------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _cursor_checksum(purpose: str, payload: bytes) -> str:
    return hashlib.sha256(purpose.encode() + b" cursor\n" + payload).hexdigest()[:16]


def filter_digest(filters: Mapping[str, Any]) -> str:
    """A short digest of a listing's filters (JSON values), which its cursors carry."""
    return hashlib.sha256(_canonical(dict(filters))).hexdigest()[:16]


def encode_cursor(position: Mapping[str, Any], filters: Mapping[str, Any], *, purpose: str) -> str:
    """The opaque cursor of `position` (JSON values) in the listing of `filters`; `purpose` names the
    listing, so a cursor of one listing is refused by another."""
    payload = _canonical({"at": dict(position), "f": filter_digest(filters)})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _cursor_checksum(purpose, payload)


def decode_cursor(cursor: str, filters: Mapping[str, Any], *, purpose: str) -> dict[str, Any]:
    """The position `cursor` names; 400 naming `cursor` when this server did not make it for this
    listing and these filters."""
    invalid = bad_request("cursor: not a cursor of this listing (use next_cursor as given)", "cursor")
    encoded, _, checksum = cursor.partition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if _cursor_checksum(purpose, payload) != checksum:
            raise invalid
        data = json.loads(payload)
        position, digest = data["at"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid from None
    if not isinstance(position, dict):
        raise invalid
    if digest != filter_digest(filters):
        raise bad_request("cursor: belongs to a listing with other filters", "cursor")
    return position
