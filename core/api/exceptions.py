"""The one error shape of the API: ``{"code": ..., "detail": ..., "fields": {...}}``.

``exception_handler`` is DRF's ``EXCEPTION_HANDLER``: it answers every refusal
of an API view, whether DRF raised it (validation, authentication,
permissions, throttling, parsing), Django did (``Http404``, an oversized
body) or a service did (``core.errors.ServiceError``). ``bad_request``,
``permission_denied``, ``page_not_found`` and ``server_error`` are Django's
``handler400/403/404/500``: they answer the same shape for paths under
``/api/`` (an unknown URL, an uncaught exception) and leave the dashboard's
HTML pages to Django. docs/api.md lists every code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.settings import api_settings
from rest_framework.views import set_rollback

from core.errors import ServiceError

API_PREFIX = "/api/"
INVALID = "invalid"
PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_LARGE_DETAIL = "The request body is larger than the server accepts."

security_log = logging.getLogger("django.security.RequestDataTooBig")


def error_body(code: str, detail: str, fields: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": _printable(detail)}
    if fields:
        body["fields"] = {_printable(name): [_printable(m) for m in messages] for name, messages in fields.items()}
    return body


def _printable(text: str) -> str:
    """A message may quote what the caller sent (a key, a value): a NUL in it is shown as U+FFFD.

    JSON can carry a NUL, but no text column or log line takes one, and the
    schema promises error text without it.
    """
    return text.replace("\x00", "\ufffd")


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """Turn a refusal into the one error shape; None lets anything else become a 500."""
    if isinstance(exc, ServiceError):
        set_rollback()
        return Response(error_body(exc.code, exc.detail, exc.fields), status=exc.status, headers=exc.headers)
    if isinstance(exc, RequestDataTooBig):
        # Django logs this itself when it meets it outside DRF; keep that trail.
        security_log.warning("%s", exc)
        return Response(error_body(PAYLOAD_TOO_LARGE, TOO_LARGE_DETAIL), status=413)
    if isinstance(exc, DjangoValidationError):
        # A model's clean() reached from a service: the same 400 as a serializer's.
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(math.ceil(exc.wait))  # type: ignore[attr-defined]
    set_rollback()
    return Response(_body(exc), status=exc.status_code, headers=headers)


def _body(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        return validation_body(exc.detail)
    code = exc.default_code if exc.default_code != "error" else "server_error"
    return error_body(code, _text(exc.detail))


def validation_body(detail: Any) -> dict[str, Any]:
    """``invalid`` with every field's messages, nested fields joined by dots (``config.threshold``)."""
    errors = detail if isinstance(detail, Mapping) else {api_settings.NON_FIELD_ERRORS_KEY: detail}
    general: list[str] = []
    fields: dict[str, list[str]] = {}
    for key, value in errors.items():
        if key in (api_settings.NON_FIELD_ERRORS_KEY, "__all__"):
            general.extend(_messages(value))
        else:
            fields.update(_flatten(value, str(key)))
    summary = general + [f"{name}: {messages[0]}" for name, messages in fields.items() if messages]
    return error_body(INVALID, " ".join(_sentence(s) for s in summary) or "The request is invalid.", fields)


def _flatten(value: Any, path: str) -> dict[str, list[str]]:
    if isinstance(value, Mapping):
        nested: dict[str, list[str]] = {}
        for key, inner in value.items():
            nested.update(_flatten(inner, f"{path}.{key}"))
        return nested
    if isinstance(value, list) and any(isinstance(item, (Mapping, list)) for item in value):
        nested = {}
        for index, inner in enumerate(value):
            nested.update(_flatten(inner, f"{path}.{index}"))
        return nested
    messages = _messages(value)
    return {path: messages} if messages else {}


def _messages(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _text(detail: Any) -> str:
    if isinstance(detail, list):
        return " ".join(str(item) for item in detail)
    if isinstance(detail, Mapping):
        return " ".join(f"{key}: {value}" for key, value in detail.items())
    return str(detail)


# Django's error views, for what never reaches an API view.


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def json_error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse(error_body(code, detail), status=status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return json_error(PAYLOAD_TOO_LARGE, TOO_LARGE_DETAIL, 413)
    return json_error("bad_request", "The request is malformed.", 400)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api(request):
        return defaults.permission_denied(request, exception)
    return json_error("permission_denied", str(exceptions.PermissionDenied.default_detail), 403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api(request):
        return defaults.page_not_found(request, exception)
    return json_error("not_found", f"No API endpoint at {request.path}.", 404)


def server_error(request: HttpRequest) -> HttpResponse:
    if not is_api(request):
        return defaults.server_error(request)
    return json_error("server_error", "The server failed to answer; the error is logged. Retry later.", 500)
