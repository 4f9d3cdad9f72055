"""The one error shape of the API (``core.api.exceptions``; the codes are in docs/api.md), and API tokens."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework import serializers

from core.filters import DateTimeParameter
from core.models import ApiToken

# Text with a character that is not a space, and no NUL: what DRF's CharField accepts when it may not be
# blank (it strips surrounding whitespace, and refuses NUL anywhere since no text column can hold one).
NOT_BLANK = r"^[^\x00]*[^\x00\s][^\x00]*$"


class ReasonField(serializers.RegexField):
    """Why an action was taken, for the audit log: up to 2,000 characters with at least one that is not a space.

    The schema says so with its pattern, so a client (or a fuzzer) learns that a reason of spaces or
    control characters alone, or one holding a NUL, is refused, as it is.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", "Why: kept in the audit log.")
        super().__init__(NOT_BLANK, max_length=2000, **kwargs)


class StrictInput:
    """A request body's fields take JSON values of their own type only, and read-only fields stay out.

    DRF reads the number ``0`` as the text "0", ``"1"`` as the integer 1 and
    ``"yes"`` as true, and drops a read-only field it was sent, so a client's
    mistake is stored as something else or silently ignored. The schema says
    which type each field takes and marks read-only ones; this holds a body to
    exactly that (400 ``invalid`` naming each field). Mix it in before DRF's
    serializer class of any serializer that reads a JSON body.
    """

    fields: Any

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            errors = {
                name: [problem]
                for name, field in self.fields.items()
                if name in data and (problem := _problem(field, data[name]))
            }
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]


def _problem(field: serializers.Field, value: Any) -> str | None:
    if field.read_only:
        return "This field is read-only; leave it out."
    if value is None:
        return None  # the field's own allow_null decides
    if isinstance(field, serializers.DictField) and isinstance(value, Mapping):
        return next(filter(None, (_problem(field.child, item) for item in value.values())), None)
    if isinstance(field, serializers.ListField) and isinstance(value, list):
        return next(filter(None, (_problem(field.child, item) for item in value)), None)
    if isinstance(field, serializers.CharField | serializers.ChoiceField | serializers.RelatedField):
        if not isinstance(value, str):
            return "Not a valid string."
        # PostgreSQL text cannot hold NUL: refused here before any lookup or write reaches it.
        return "Null characters are not allowed." if "\x00" in value else None
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "Must be true or false."
    if isinstance(field, serializers.IntegerField):
        return None if isinstance(value, int) and not isinstance(value, bool) else "A valid integer is required."
    if isinstance(field, serializers.FloatField):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "A valid number is required."
    return None


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable; docs/api.md lists every code.")
    detail = serializers.CharField(help_text="A sentence for people; its wording may change.")
    # Declared fields leave the class namespace (DRF's metaclass), so this shadows no Serializer.fields.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="With code 'invalid' and some others: the request field (dotted when nested) -> its messages.",
    )


class ApiTokenSerializer(serializers.ModelSerializer):
    """A token as anyone may see it: never its hash, and its secret only in the answer that creates it."""

    user = serializers.CharField(source="user.username", read_only=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.SCOPES), read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "prefix", "name", "user", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(help_text="The secret, shown only in this answer: store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class ApiTokenRequestSerializer(StrictInput, serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. 'vision CI'.")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiToken.SCOPES), allow_empty=False)
    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.all(),
        required=False,
        help_text="Whose token it is (a username); the caller by default.",
    )
    expires_at = DateTimeParameter(required=False, allow_null=True, help_text="With a time zone.")
    expires_in_days = serializers.IntegerField(required=False, min_value=1, max_value=3650)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("expires_at") and attrs.get("expires_in_days"):
            raise serializers.ValidationError({"expires_in_days": "Give expires_at or expires_in_days, not both."})
        days = attrs.pop("expires_in_days", None)
        if days:
            attrs["expires_at"] = timezone.now() + timedelta(days=days)
        return attrs


class TokenRevokeSerializer(StrictInput, serializers.Serializer):
    reason = ReasonField()
