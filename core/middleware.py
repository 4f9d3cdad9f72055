"""Errors under ``/api/`` stay JSON even where Django answers them itself.

With ``DEBUG`` on (the development default and the demo's setting) Django
answers an unknown URL and an uncaught exception with its technical HTML
pages, bypassing ``handler404``/``handler500``. An API client, a fuzzer or
``edgefleet publish`` then gets HTML it cannot read. This middleware answers
those in the one error shape too; the exception is still logged with its
traceback, as Django's own handler would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse

from core.api import exceptions as api_errors

log = logging.getLogger("django.request")

# What a status means when Django, not an API view, produced it.
CODES = {
    400: ("bad_request", "The request is malformed."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "No API endpoint at this path."),
    405: ("method_not_allowed", "This method is not allowed here."),
    413: (api_errors.PAYLOAD_TOO_LARGE, api_errors.TOO_LARGE_DETAIL),
    500: ("server_error", "The server failed to answer; the error is logged. Retry later."),
}


class ApiErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and api_errors.is_api(request)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return _answer(response.status_code, request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not api_errors.is_api(request):
            return None
        if isinstance(exception, Http404):
            return _answer(404, request)
        if isinstance(exception, PermissionDenied):
            return _answer(403, request)
        log.error("Internal Server Error: %s", request.path, exc_info=exception, extra={"status_code": 500})
        return _answer(500, request)


def _answer(status: int, request: HttpRequest) -> HttpResponse:
    code, detail = CODES.get(status, CODES[500] if status >= 500 else CODES[400])
    if status == 404:
        detail = f"No API endpoint at {request.path}."
    return api_errors.json_error(code, detail, status)
