"""The one error shape of the API (``core.api.exceptions``; the codes are in docs/api.md)."""

from __future__ import annotations

from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable; docs/api.md lists every code.")
    detail = serializers.CharField(help_text="A sentence for people; its wording may change.")
    # Declared fields leave the class namespace (DRF's metaclass), so this shadows no Serializer.fields.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="With code 'invalid' and some others: the request field (dotted when nested) -> its messages.",
    )
