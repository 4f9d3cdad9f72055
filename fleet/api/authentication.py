"""Device authentication: HTTP Basic with the device id and the secret issued at enrollment."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from core.api.authentication import DeviceUser
from fleet.models import Device, DeviceCredential


class DeviceAuthentication(authentication.BasicAuthentication):
    """HTTP Basic with the device id and secret issued at enrollment."""

    # request.auth carries the Device, where DRF's Basic authentication leaves it None.
    def authenticate_credentials(  # type: ignore[override]
        self, userid: str, password: str, request: Any = None
    ) -> tuple[DeviceUser, Device]:
        device = DeviceCredential.authenticate(userid, password)
        if device is None:
            raise exceptions.AuthenticationFailed("Unknown, wrong or revoked device credentials.")
        return DeviceUser(device), device


class DeviceScheme(OpenApiAuthenticationExtension):
    target_class = DeviceAuthentication
    name = "deviceBasic"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic", "description": "Device id and secret from enrollment."}
