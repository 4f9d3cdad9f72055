"""Model registry: models, versions, signed bundles, aliases and signing keys."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import IntegrityError, models, transaction
from django.urls import reverse
from django.utils import timezone

from agent.kernel import protocol
from agent.kernel.manifest import parse_version
from registry.bundles import Signer

name_validator = RegexValidator(r"^[a-z0-9][a-z0-9_-]{0,62}$", "Use lowercase letters, digits, dashes and underscores.")
target_validator = RegexValidator(r"^[a-z0-9]+-[a-z0-9]+$", "A target looks like cpu-fp32 or cpu-int8.")


def validate_semver(value: str) -> None:
    try:
        parse_version(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class SigningKey(models.Model):
    """The public half and dates of an Ed25519 signing key.

    The private half lives in ``REGISTRY_KEY_DIR/<key_id>.pem`` (mode 0600):
    never in the database, so a database dump or backup cannot sign a bundle.
    """

    key_id = models.CharField(max_length=16, unique=True)
    public_key = models.CharField(max_length=64, help_text="Raw Ed25519 public key, base64.")
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True, help_text="Signatures are refused from then on.")
    automatic = models.BooleanField(default=False, help_text="Created on first use rather than by an operator.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # The web process, the bridge and workers may all need a key at the
            # first start: one of them creates it, the others lose the insert
            # and use it, so no device is enrolled with a key that is not the signer.
            models.UniqueConstraint(
                fields=["automatic"], condition=models.Q(automatic=True), name="one_automatic_signing_key"
            ),
        ]

    def __str__(self) -> str:
        return self.key_id

    @staticmethod
    def key_dir() -> Path:
        return Path(settings.REGISTRY_KEY_DIR)

    @property
    def private_key_path(self) -> Path:
        return self.key_dir() / f"{self.key_id}.pem"

    def is_usable(self, at: datetime | None = None) -> bool:
        return self.retired_at is None or (at or timezone.now()) < self.retired_at

    def signer(self) -> Signer:
        try:
            data = self.private_key_path.read_bytes()
        except OSError as exc:
            raise ImproperlyConfigured(f"Private key of signing key {self.key_id} cannot be read: {exc}") from None
        key = load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ImproperlyConfigured(f"{self.private_key_path} does not hold an Ed25519 key.")
        signer = Signer(key)
        if signer.key_id != self.key_id:
            raise ImproperlyConfigured(f"{self.private_key_path} holds another key than {self.key_id}.")
        return signer

    def as_trusted(self) -> dict[str, Any]:
        """The trust store entry devices get (agent.kernel.verify.TrustedKey)."""
        return {
            "key_id": self.key_id,
            "algorithm": "ed25519",
            "public_key": self.public_key,
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }

    @classmethod
    def generate(cls, *, automatic: bool = False) -> SigningKey:
        """Create a key pair: the private key goes to a new 0600 file, the public one to the database."""
        signer = Signer(Ed25519PrivateKey.generate())
        directory = cls.key_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = signer.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        path = directory / f"{signer.key_id}.pem"
        # O_EXCL: never overwrite a key file; 0600 from creation, not chmod after.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            with transaction.atomic():
                return cls.objects.create(
                    key_id=signer.key_id, public_key=base64.b64encode(signer.public_bytes).decode(), automatic=automatic
                )
        except IntegrityError:
            path.unlink(missing_ok=True)
            raise

    @classmethod
    def current(cls) -> SigningKey:
        """The newest usable key, created on first use where settings allow it."""
        key = cls.objects.filter(models.Q(retired_at__isnull=True) | models.Q(retired_at__gt=timezone.now())).first()
        if key is not None:
            return key
        if not settings.REGISTRY_AUTO_SIGNING_KEY:
            raise ImproperlyConfigured("No usable signing key: run `manage.py signing_key create`.")
        if cls.objects.filter(automatic=True).exists():
            # The first key was retired without a successor: in development, make another.
            return cls.generate()
        try:
            return cls.generate(automatic=True)
        except IntegrityError:
            # Another process made the first key a moment ago: use that one.
            return cls.objects.get(automatic=True)


class KeyringUpdate(models.Model):
    """A signed keyring document (agent.kernel.verify.apply_keyring_update) devices learn new keys from."""

    sequence = models.PositiveIntegerField(unique=True)
    document = models.JSONField()
    signature = models.JSONField()
    signed_by = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sequence"]

    def as_update(self) -> dict[str, Any]:
        return {"document": self.document, "signature": self.signature}


class Model(models.Model):
    TASKS = [("classification", "classification"), ("detection", "detection")]
    ROLES = [("edge", "edge"), ("cloud", "cloud")]

    name = models.CharField(max_length=63, unique=True, validators=[name_validator])
    task = models.CharField(max_length=20, choices=TASKS)
    role = models.CharField(max_length=10, choices=ROLES, default="edge")
    labels = models.JSONField(default=list)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.labels, list) or not all(isinstance(x, str) and x for x in self.labels):
            raise ValidationError({"labels": "Labels must be a list of non-empty strings."})

    def next_sequence(self) -> int:
        """Call inside the publishing transaction, with this row locked."""
        last = self.versions.aggregate(models.Max("sequence"))["sequence__max"]
        return (last or 0) + 1


def calibration_path(instance: ModelVersion, filename: str) -> str:
    return f"calibration/{instance.model.name}/{instance.version}/{filename}"


class ModelVersion(models.Model):
    """One published version; its content never changes once it exists."""

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=64, validators=[validate_semver])
    sequence = models.PositiveIntegerField()
    content_digest = models.CharField(max_length=64, help_text="sha256 over the model file and metadata.")
    labels = models.JSONField(default=list)
    input_spec = models.JSONField()
    output = models.JSONField()
    thresholds = models.JSONField(default=dict)
    min_agent_version = models.CharField(max_length=64, default="0.1.0", validators=[validate_semver])
    bundle_ttl_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="Days its bundles stay valid from publication; empty means REGISTRY_BUNDLE_TTL_DAYS.",
    )
    tolerance = models.JSONField(default=dict, help_text="atol/rtol devices reproduce reference outputs within.")
    provenance = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    published_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    deprecated_at = models.DateTimeField(null=True, blank=True)
    deprecation_reason = models.TextField(blank=True)
    reference_distribution = models.JSONField(
        null=True,
        blank=True,
        help_text="CI's reference distribution ({confidence: bin counts, classes: top-1 counts}): "
        "the version's drift baseline.",
    )
    calibration = models.FileField(
        upload_to=calibration_path,
        max_length=300,
        blank=True,
        help_text="Pre-processed calibration tensors (.npz) for the INT8 variant; not part of any bundle.",
    )

    IMMUTABLE = (
        "model_id",
        "version",
        "sequence",
        "content_digest",
        "labels",
        "input_spec",
        "output",
        "bundle_ttl_days",
    )

    class Meta:
        ordering = ["model__name", "-sequence"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="version_unique_per_model"),
            models.UniqueConstraint(fields=["model", "sequence"], name="sequence_unique_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.version}"

    def bundle_expires_at(self, created: datetime | None = None) -> datetime:
        """When the version's bundles expire: what every manifest of it says in ``expires_at``."""
        start = created or self.created_at or timezone.now()
        return start + timedelta(days=self.bundle_ttl_days or settings.REGISTRY_BUNDLE_TTL_DAYS)

    def clean(self) -> None:
        if self.pk is not None:
            stored = ModelVersion.objects.filter(pk=self.pk).values(*self.IMMUTABLE).first()
            if stored is not None:
                changed = [f for f in self.IMMUTABLE if stored[f] != getattr(self, f)]
                if changed:
                    raise ValidationError({changed[0].removesuffix("_id"): "A published version never changes."})
        if self.sequence is not None and self.model_id is not None:
            clash = ModelVersion.objects.filter(model_id=self.model_id, sequence=self.sequence).exclude(pk=self.pk)
            if clash.exists():
                raise ValidationError({"sequence": f"Sequence {self.sequence} is already used by this model."})

    @property
    def is_deprecated(self) -> bool:
        return self.deprecated_at is not None

    def deprecate(self, reason: str) -> None:
        with transaction.atomic():
            row = ModelVersion.objects.select_for_update().get(pk=self.pk)
            if row.deprecated_at is None:
                row.deprecated_at = timezone.now()
            row.deprecation_reason = reason
            row.save(update_fields=["deprecated_at", "deprecation_reason"])
        self.deprecated_at, self.deprecation_reason = row.deprecated_at, row.deprecation_reason


def bundle_path(instance: Bundle, filename: str) -> str:
    version = instance.version
    return f"bundles/{version.model.name}/{version.version}/{filename}"


class Bundle(models.Model):
    """A signed archive of one version for one target (cpu-fp32, cpu-int8, ...)."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="bundles")
    target = models.CharField(max_length=32, validators=[target_validator])
    file = models.FileField(upload_to=bundle_path, max_length=300)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    manifest_sha256 = models.CharField(max_length=64)
    key_id = models.CharField(max_length=16)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["version", "target"]
        constraints = [models.UniqueConstraint(fields=["version", "target"], name="bundle_unique_per_target")]

    def __str__(self) -> str:
        return f"{self.version}/{self.target}"

    def download_path(self) -> str:
        return reverse("bundle-download", kwargs={"pk": self.pk})

    def desired_model(self) -> protocol.BundleRef:
        """The ``model`` part of a desired document that points a device at this bundle."""
        version = self.version
        return protocol.BundleRef(
            name=version.model.name,
            version=version.version,
            sequence=version.sequence,
            target=self.target,
            bundle_url=self.download_path(),
            sha256=self.sha256,
            size=self.size,
            manifest_sha256=self.manifest_sha256,
        )


class Alias(models.Model):
    """A movable name (candidate, production, ...) for one published version of a model."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=63, validators=[name_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["model__name", "name"]
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"

    def clean(self) -> None:
        if self.version_id is None or self.model_id is None:
            return
        if self.version.model_id != self.model_id:
            raise ValidationError({"version": "The version belongs to another model."})
        if not self.version.bundles.exists():
            raise ValidationError({"version": "Only a published version (one with a bundle) can be aliased."})
        if self.version.is_deprecated:
            raise ValidationError({"version": "A deprecated version cannot be aliased."})
