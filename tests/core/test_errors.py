"""One error shape for the whole API: every refusal is ``{code, detail, fields?}`` with a documented code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django_filters
import pytest
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.test import Client, RequestFactory
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from core import filters as core_filters
from core.api import exceptions as api_errors
from fleet import filters as fleet_filters
from fleet.api import views as fleet_views
from fleet.models import EnrollmentToken, Site
from registry import filters as registry_filters
from telemetry import alerts
from telemetry import filters as telemetry_filters
from telemetry.models import Alert, AlertRule
from tests.paths import ROOT

pytestmark = pytest.mark.django_db

SHAPE = {"code", "detail", "fields"}


def refusal(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body, checked against the one shape; returned for the test's own checks."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert set(body) <= SHAPE and {"code", "detail"} <= set(body), body
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    if "fields" in body:
        assert body["fields"] and all(
            isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages)
            for messages in body["fields"].values()
        ), body
    return body


@pytest.fixture
def fleet(token_client: Callable[..., APIClient]) -> APIClient:
    return token_client("fleet")


# --- 400 --------------------------------------------------------------------------------------


def test_it_answers_a_serializer_error_as_invalid_with_the_fields(admin_client: APIClient) -> None:
    response = admin_client.post("/api/v1/sites/", {"slug": "Bad Slug!"}, format="json")
    body = refusal(response, 400, "invalid")
    assert set(body["fields"]) == {"slug", "name"}
    assert "slug:" in body["detail"] and "name:" in body["detail"]


def test_it_answers_an_enrollment_without_a_name_as_invalid(anonymous: APIClient) -> None:
    body = refusal(anonymous.post("/api/v1/enroll", {"token": "efe_x"}, format="json"), 400, "invalid")
    assert list(body["fields"]) == ["name"]


def test_it_answers_malformed_json_as_a_parse_error(anonymous: APIClient) -> None:
    response = anonymous.post("/api/v1/enroll", data='{"token": ', content_type="application/json")
    body = refusal(response, 400, "parse_error")
    assert "fields" not in body


def test_it_joins_nested_field_names_with_dots() -> None:
    body = api_errors.validation_body(
        {"config": {"threshold": ["Too high."]}, "items": [{}, {"name": ["Required."]}], "non_field_errors": ["No."]}
    )
    assert body["code"] == "invalid"
    assert body["fields"] == {"config.threshold": ["Too high."], "items.1.name": ["Required."]}
    assert body["detail"].startswith("No. config.threshold: Too high.")


def test_it_answers_a_django_validation_error_from_a_model_as_invalid() -> None:
    exc = DjangoValidationError({"name": ["Taken."], "__all__": ["Inconsistent."]})
    response = api_errors.exception_handler(exc, {})
    assert response is not None and response.status_code == 400
    assert response.data == {"code": "invalid", "detail": "Inconsistent. name: Taken.", "fields": {"name": ["Taken."]}}


# --- invalid filter values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/devices/", {"online": "bogus"}, "online"),
        ("/api/v1/devices/", {"revoked": "maybe"}, "revoked"),
        ("/api/v1/alerts/", {"live": "yes please"}, "live"),
        ("/api/v1/alerts/", {"since": "yesterday"}, "since"),
        ("/api/v1/alerts/", {"state": "bogus"}, "state"),
        ("/api/v1/alerts/", {"severity": "apocalyptic"}, "severity"),
        ("/api/v1/models/", {"task": "segmentation"}, "task"),
        ("/api/v1/models/parts/versions/", {"deprecated": "perhaps"}, "deprecated"),
        ("/api/v1/devices/", {"ordering": "secret"}, "ordering"),
        ("/api/v1/sites/", {"ordering": "-name,bogus"}, "ordering"),
        ("/api/v1/sites/", {"ordering": "name, slug"}, "ordering"),
        ("/api/v1/sites/", {"ordering": "name,"}, "ordering"),
        ("/api/v1/sites/", {"limit": "0"}, "limit"),
        ("/api/v1/sites/", {"limit": "1001"}, "limit"),
        ("/api/v1/sites/", {"limit": "ten"}, "limit"),
        ("/api/v1/sites/", {"offset": "-1"}, "offset"),
        ("/api/v1/sites/", {"offset": "null"}, "offset"),
        ("/api/v1/sites/", {"offset": str(2**63)}, "offset"),
    ],
)
def test_it_answers_an_invalid_filter_value_as_invalid_naming_the_parameter(
    viewer_client: APIClient, path: str, params: dict[str, str], field: str
) -> None:
    body = refusal(viewer_client.get(path, params), 400, "invalid")
    assert list(body["fields"]) == [field]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slug": "s1", "name": 0}, "name"),
        ({"slug": "s1", "name": "S1", "description": False}, "description"),
        ({"slug": "s1", "name": "S1", "device_count": 3}, "device_count"),
        ({"slug": "s1", "name": "S1\x00"}, "name"),
        ({"slug": "s1", "name": "   "}, "name"),
    ],
)
def test_a_body_field_takes_a_json_value_of_its_own_type_and_no_read_only_field(
    admin_client: APIClient, body: dict[str, Any], field: str
) -> None:
    response = admin_client.post("/api/v1/sites/", body, format="json")
    assert list(refusal(response, 400, "invalid")["fields"]) == [field]
    assert not Site.objects.filter(slug="s1").exists()


def test_a_typed_body_field_is_not_read_from_a_string(token_client: Callable[..., APIClient], site: Site) -> None:
    client = token_client("fleet")
    url = f"/api/v1/sites/{site.slug}/enrollment-tokens/"
    assert list(refusal(client.post(url, {"ttl_hours": "2"}, format="json"), 400, "invalid")["fields"]) == ["ttl_hours"]
    assert client.post(url, {"ttl_hours": 2}, format="json").status_code == 201


def test_a_message_quoting_a_nul_the_caller_sent_shows_it_replaced(
    token_client: Callable[..., APIClient], enroll_device: Callable[..., Any], site: Site
) -> None:
    """As found by the schema fuzz: an unknown config key with a NUL came back inside the field's message."""
    device = enroll_device(site).device
    url = f"/api/v1/devices/{device.device_id}/assign-model/"
    body = {"model": "parts", "version": "1.0.0", "config": {"a\u0000b": 1}}

    answer = refusal(token_client("fleet").post(url, body, format="json"), 400, "invalid")

    messages = [m for ms in answer["fields"].values() for m in ms]
    assert messages and all("\x00" not in m for m in messages) and "\x00" not in answer["detail"]
    assert any("a\ufffdb" in m for m in messages)


@pytest.mark.parametrize("value", ["true", "false", "TRUE", "1", "0", ""])
def test_it_still_reads_every_spelling_of_a_boolean_filter(viewer_client: APIClient, value: str) -> None:
    assert viewer_client.get("/api/v1/devices/", {"online": value}).status_code == 200


@pytest.mark.parametrize(("path", "query"), [("/devices/", {"online": "bogus"}), ("/", {"sort": "bogus"})])
def test_the_dashboard_answers_an_invalid_filter_value_with_a_400_page(
    admin_client: APIClient, path: str, query: dict[str, str]
) -> None:
    response = admin_client.get(path, query)
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


FILTERSETS = [
    fleet_filters.SiteFilter,
    fleet_filters.DeviceFilter,
    registry_filters.ModelFilter,
    registry_filters.ModelVersionFilter,
    registry_filters.BundleFilter,
    telemetry_filters.AlertFilter,
]


@pytest.mark.parametrize("filterset", FILTERSETS, ids=lambda f: f.__name__)
def test_no_filterset_reads_a_bad_boolean_as_no_filter(filterset: type[django_filters.FilterSet]) -> None:
    booleans = [name for name, f in filterset.base_filters.items() if isinstance(f, django_filters.BooleanFilter)]
    for name in booleans:
        assert isinstance(filterset.base_filters[name], core_filters.BooleanFilter), name
        assert not filterset({name: "bogus"}, queryset=filterset._meta.model.objects.none()).is_valid(), name


# --- 401, 403 -------------------------------------------------------------------------------------


def test_it_answers_no_credentials_as_not_authenticated(anonymous: APIClient) -> None:
    response = anonymous.get("/api/v1/sites/")
    refusal(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


def test_it_answers_a_wrong_token_as_authentication_failed(anonymous: APIClient) -> None:
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer eft_not-a-real-token")
    refusal(anonymous.get("/api/v1/devices/"), 401, "authentication_failed")


def test_it_answers_wrong_device_credentials_as_authentication_failed(anonymous: APIClient) -> None:
    anonymous.credentials(HTTP_AUTHORIZATION="Basic ZGV2LW5vcGU6d3Jvbmc=")  # dev-nope:wrong
    refusal(anonymous.get("/api/v1/device/self"), 401, "authentication_failed")


def test_it_answers_a_missing_scope_as_permission_denied(token_client: Callable[..., APIClient]) -> None:
    response = token_client("publish").post("/api/v1/sites/", {"slug": "x", "name": "X"}, format="json")
    refusal(response, 403, "permission_denied")


def test_it_answers_a_viewer_writing_as_permission_denied(viewer_client: APIClient, site: Site) -> None:
    refusal(viewer_client.patch(f"/api/v1/sites/{site.slug}/", {"name": "Y"}, format="json"), 403, "permission_denied")


# --- 404, 405 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices/dev-nope/",
        "/api/v1/sites/nowhere/",
        "/api/v1/models/nothing/",
        "/api/v1/bundles/999999/download",
    ],
)
def test_it_answers_an_unknown_object_as_not_found(fleet: APIClient, path: str) -> None:
    refusal(fleet.get(path), 404, "not_found")


def test_it_answers_an_unknown_api_url_as_not_found_in_json(admin_client: APIClient) -> None:
    body = refusal(admin_client.get("/api/v1/no-such-thing/"), 404, "not_found")
    assert "/api/v1/no-such-thing/" in body["detail"]
    refusal(admin_client.get("/api/v2/"), 404, "not_found")


@pytest.mark.parametrize("debug", [True, False])
def test_it_answers_an_unknown_api_url_in_json_with_debug_on_or_off(
    admin_client: APIClient, settings: Any, debug: bool
) -> None:
    settings.DEBUG = debug
    refusal(admin_client.get("/api/v1/no-such-thing/"), 404, "not_found")
    refusal(admin_client.post("/api/v1/no-such-thing/", {}, format="json"), 404, "not_found")


def test_an_unknown_page_outside_the_api_stays_html(admin_client: APIClient) -> None:
    response = admin_client.get("/no-such-page/")
    assert response.status_code == 404 and not response["Content-Type"].startswith("application/json")


def test_it_answers_a_wrong_method_as_method_not_allowed(fleet: APIClient, anonymous: APIClient) -> None:
    refusal(fleet.delete("/api/v1/devices/dev-nope/"), 405, "method_not_allowed")
    refusal(anonymous.get("/api/v1/enroll"), 405, "method_not_allowed")


# --- 406, 413, 415, 429 ---------------------------------------------------------------------------


def test_it_answers_an_unproducible_format_as_not_acceptable(fleet: APIClient) -> None:
    response = fleet.get("/api/v1/sites/", HTTP_ACCEPT="text/csv")
    refusal(response, 406, "not_acceptable")


def test_it_answers_an_oversized_json_body_as_payload_too_large(admin_client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = {"slug": "big", "name": "x" * 2000}
    refusal(admin_client.post("/api/v1/sites/", body, format="json"), 413, "payload_too_large")
    assert not Site.objects.filter(slug="big").exists()


def test_it_answers_an_oversized_form_body_as_payload_too_large(admin_client: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    # Publishing is the endpoint that reads forms (multipart); the others read JSON only.
    response = admin_client.post("/api/v1/models/parts/versions/", {"metadata": "x" * 2000}, format="multipart")
    refusal(response, 413, "payload_too_large")
    data = f"slug=big&name={'x' * 2000}"
    response = admin_client.post("/api/v1/sites/", data, content_type="application/x-www-form-urlencoded")
    refusal(response, 415, "unsupported_media_type")


def test_django_answers_an_oversized_api_request_it_refused_itself_with_a_json_413() -> None:
    request = RequestFactory().post("/api/v1/enroll")
    response = api_errors.bad_request(request, RequestDataTooBig("too big"))
    refusal(response, 413, "payload_too_large")
    refusal(api_errors.bad_request(request, ValueError("odd")), 400, "bad_request")
    refusal(api_errors.permission_denied(request, PermissionError()), 403, "permission_denied")


def test_it_answers_an_unreadable_content_type_as_unsupported_media_type(anonymous: APIClient) -> None:
    response = anonymous.post("/api/v1/enroll", data="token=x", content_type="text/plain")
    refusal(response, 415, "unsupported_media_type")


@pytest.fixture
def one_enrollment_a_minute(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"enroll": "1/minute"})
    cache.clear()
    yield
    cache.clear()


def test_it_answers_too_many_enrollments_as_throttled(anonymous: APIClient, one_enrollment_a_minute: None) -> None:
    anonymous.post("/api/v1/enroll", {"token": "efe_x", "name": "cam-1"}, format="json")
    response = anonymous.post("/api/v1/enroll", {"token": "efe_x", "name": "cam-1"}, format="json")
    refusal(response, 429, "throttled")
    assert 0 < int(response["Retry-After"]) <= 60


# --- service errors -------------------------------------------------------------------------------


def test_it_answers_a_refused_enrollment_with_the_services_code(anonymous: APIClient, site: Site) -> None:
    row, token = EnrollmentToken.issue(site)
    EnrollmentToken.objects.filter(pk=row.pk).update(expires_at=timezone.now())
    refusal(anonymous.post("/api/v1/enroll", {"token": token, "name": "cam-1"}, format="json"), 410, "token_expired")
    refusal(anonymous.post("/api/v1/enroll", {"token": "efe_x", "name": "cam-1"}, format="json"), 401, "unknown_token")


def test_it_answers_a_publish_without_a_model_file_with_the_field(token_client: Callable[..., APIClient]) -> None:
    response = token_client("publish").post("/api/v1/models/parts/versions/", {"metadata": "{}"}, format="multipart")
    body = refusal(response, 400, "missing_model")
    assert list(body["fields"]) == ["model"]


def test_it_answers_acknowledging_a_resolved_alert_as_a_conflict(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    alerts.ensure_rules()
    device = enroll_device(site).device
    alert = Alert.objects.create(
        rule=AlertRule.objects.first(), device=device, since=timezone.now(), state=Alert.State.RESOLVED
    )
    refusal(admin_client.post(f"/api/v1/alerts/{alert.pk}/acknowledge/"), 409, "alert_not_open")


def test_it_answers_a_site_with_devices_that_cannot_go_with_the_services_code(
    admin_client: APIClient, site: Site, enroll_device: Callable[..., Any]
) -> None:
    enroll_device(site)
    refusal(admin_client.delete(f"/api/v1/sites/{site.slug}/"), 409, "site_has_devices")


# --- 500 ------------------------------------------------------------------------------------------


def test_it_answers_an_uncaught_exception_under_the_api_as_a_json_500(
    admin_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database caught fire")

    monkeypatch.setattr(fleet_views.SiteViewSet, "list", fail)
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    body = refusal(client.get("/api/v1/sites/"), 500, "server_error")
    assert "fire" not in body["detail"]


def test_it_answers_an_uncaught_exception_in_json_with_debug_on_and_logs_the_traceback(
    admin_user: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database caught fire")

    settings.DEBUG = True
    monkeypatch.setattr(fleet_views.SiteViewSet, "list", fail)
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    body = refusal(client.get("/api/v1/sites/"), 500, "server_error")
    assert "fire" not in body["detail"]
    assert any(r.exc_info and "fire" in str(r.exc_info[1]) for r in caplog.records)


# --- the contract ---------------------------------------------------------------------------------


@pytest.fixture
def schema(admin_client: APIClient) -> dict[str, Any]:
    return admin_client.get("/api/v1/schema/", {"format": "json"}).json()


def test_the_schema_describes_the_error_body(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert set(error["properties"]) == SHAPE and set(error["required"]) == {"code", "detail"}
    assert error["properties"]["fields"]["additionalProperties"]["items"]["type"] == "string"


def test_every_error_response_in_the_schema_is_the_error_body(schema: dict[str, Any]) -> None:
    errors = [
        (path, method, status, response)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if int(status) >= 400
    ]
    assert len(errors) > 100
    for path, method, status, response in errors:
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (
            path,
            method,
            status,
        )


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/v1/devices/", "get", {"200", "400", "401", "403"}),
        ("/api/v1/devices/{device_id}/", "get", {"200", "401", "403", "404"}),
        ("/api/v1/devices/{device_id}/assign-model/", "post", {"200", "400", "401", "403", "404", "409", "413", "415"}),
        ("/api/v1/devices/{device_id}/events/", "get", {"200", "400", "401", "403", "404"}),
        ("/api/v1/sites/{slug}/", "delete", {"204", "401", "403", "404", "409"}),
        ("/api/v1/enroll", "post", {"201", "400", "401", "403", "409", "410", "413", "415", "429", "503"}),
        ("/api/v1/models/{model_name}/versions/{version}/quantize/", "post", {"202", "401", "403", "404"}),
        ("/api/v1/models/{name}/aliases/", "get", {"200", "400", "401", "403", "404"}),
        ("/api/v1/bundles/{id}/download", "get", {"200", "206", "304", "401", "403", "404", "416", "503"}),
        ("/api/v1/telemetry/", "get", {"200", "400", "401", "403", "404"}),
        ("/api/v1/alerts/{id}/acknowledge/", "post", {"200", "400", "401", "403", "404", "409", "413", "415"}),
    ],
)
def test_the_schema_lists_the_statuses_an_operation_can_answer(
    schema: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    # Besides its own: 406 (an Accept the API cannot produce) and 500 on every operation.
    assert set(schema["paths"][path][method]["responses"]) == statuses | {"406", "500"}


RAISED = re.compile(r"\b(?:ServiceError|PublishError|EnrollmentError)\(\s*\"([a-z_]+)\"")
HANDLER_CODES = {
    "invalid",
    "parse_error",
    "bad_request",
    "not_authenticated",
    "authentication_failed",
    "permission_denied",
    "not_found",
    "method_not_allowed",
    "not_acceptable",
    "payload_too_large",
    "unsupported_media_type",
    "throttled",
    "server_error",
}


def test_every_code_the_api_can_answer_is_documented() -> None:
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", (ROOT / "docs" / "api.md").read_text(), re.M))
    raised = {
        code
        for app in ("core", "registry", "fleet", "telemetry", "rollouts", "escalations")
        for path in Path(ROOT / app).rglob("*.py")
        for code in RAISED.findall(path.read_text())
    }
    assert raised >= {"unknown_token", "version_conflict", "alert_not_open"}, "the search finds the raise sites"
    assert raised | HANDLER_CODES <= set(documented), sorted((raised | HANDLER_CODES) - set(documented))
