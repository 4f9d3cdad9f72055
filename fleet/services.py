"""Workflows that span several models: enrollment and revocation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from agent.kernel import protocol
from agent.kernel.manifest import parse_version
from core import tokens
from core.errors import ServiceError
from core.models import AuditLog
from fleet import access, desired
from fleet.broker import provisioner
from fleet.models import Device, DeviceCredential, EnrollmentToken, Site
from fleet.tasks import reconcile_broker
from registry.models import Bundle, ModelVersion
from registry.trust import trust_store

log = logging.getLogger(__name__)


class EnrollmentError(ServiceError):
    """An enrollment the server refuses; the agent's CLI maps each code to an exit status."""


@dataclass(frozen=True)
class Enrollment:
    device: Device
    secret: str
    broker_url: str
    trust_store: list[dict[str, Any]]
    heartbeat_interval_s: int

    def answer(self) -> protocol.EnrollmentAnswer:
        """What the device is told, in the device kernel's model its agent parses."""
        return protocol.EnrollmentAnswer(
            device_id=self.device.device_id,
            secret=self.secret,
            site=self.device.site.slug,
            broker_url=self.broker_url,
            trust_store=[protocol.TrustStoreEntry.model_validate(key) for key in self.trust_store],
            heartbeat_interval_s=self.heartbeat_interval_s,
        )


def enroll(*, token: str, name: str, site_slug: str | None, facts: dict[str, Any]) -> Enrollment:
    """Spend a one-time enrollment token on a new device and its credentials.

    The broker is told inside the transaction: if it cannot take the
    credentials, nothing is committed and the token stays usable, so the
    device simply retries.
    """
    with transaction.atomic():
        row = (
            EnrollmentToken.objects.select_for_update()
            .select_related("site")
            .filter(token_hash=tokens.digest(token))
            .first()
        )
        if row is None or row.revoked_at is not None:
            raise EnrollmentError("unknown_token", "The enrollment token is not known.", 401)
        if row.used_at is not None:
            raise EnrollmentError("token_used", "The enrollment token was already used.", 409)
        if row.expires_at <= timezone.now():
            raise EnrollmentError("token_expired", "The enrollment token has expired.", 410)
        if site_slug and site_slug != row.site.slug:
            raise EnrollmentError(
                "wrong_site", f"The enrollment token belongs to another site than {site_slug!r}.", 403
            )
        site: Site = row.site
        if Device.objects.filter(site=site, name=name, revoked_at__isnull=True).exists():
            raise EnrollmentError("name_taken", f"A device named {name!r} is already enrolled at {site.slug}.", 409)
        # A revoked device's name may be reused: the old row keeps its history.
        Device.objects.filter(site=site, name=name).update(name=f"{name}-revoked-{timezone.now():%Y%m%d%H%M%S}")
        device = Device(
            site=site,
            name=name,
            hardware_profile=str(facts.get("hardware_profile", ""))[:64],
            agent_version=str(facts.get("agent_version", ""))[:64],
            labels=facts.get("labels") or {},
        )
        device.full_clean()
        device.save()
        _, secret = DeviceCredential.issue(device)
        row.used_at = timezone.now()
        row.used_by = device
        row.save(update_fields=["used_at", "used_by"])
        AuditLog.record(actor=None, action="device.enroll", target=device, token=row.prefix, facts=facts)
        provisioner().add_device(device.device_id, secret)
    return Enrollment(
        device=device,
        secret=secret,
        broker_url=settings.DEVICE_MQTT_URL,
        trust_store=trust_store(),
        heartbeat_interval_s=settings.HEARTBEAT_INTERVAL_S,
    )


def issue_enrollment_token(
    site: Site, *, actor: Any, ttl: timedelta | None = None, note: str = ""
) -> tuple[EnrollmentToken, str]:
    """A one-time enrollment token for ``site`` (admins only); the secret exists only in the return value."""
    access.require_admin(actor, "issue enrollment tokens")
    with transaction.atomic():
        row, secret = EnrollmentToken.issue(
            site, ttl=ttl, note=note, created_by=actor if getattr(actor, "is_authenticated", False) else None
        )
        AuditLog.record(actor=actor, action="enrollment_token.issue", target=site, token=row.prefix)
    return row, secret


def revoke_enrollment_token(token: EnrollmentToken, *, actor: Any, reason: str) -> EnrollmentToken:
    """Refuse the token from now on (admins only); a spent or revoked one cannot be revoked again."""
    access.require_admin(actor, "revoke enrollment tokens")
    with transaction.atomic():
        # Locked so a revocation and an enrollment spending the token cannot both pass their checks.
        row = EnrollmentToken.objects.select_for_update().select_related("site").get(pk=token.pk)
        if row.revoked_at is not None:
            raise ServiceError("token_revoked", f"The enrollment token {row.prefix} was already revoked.", 409)
        if row.used_at is not None:
            raise ServiceError("token_used", f"The enrollment token {row.prefix} was already used.", 409)
        row.revoked_at = timezone.now()
        row.save(update_fields=["revoked_at"])
        AuditLog.record(
            actor=actor,
            action="enrollment_token.revoke",
            target=row.site,
            reason=reason,
            token=row.prefix,
            note=row.note,
        )
    return row


def revoke_device(device: Device, *, actor: Any, reason: str) -> bool:
    """Cut a device off at the API and the broker, and record who and why.

    The database change commits even when the broker or the task queue is
    down: the API refuses the device at once. The broker removal goes to a
    worker (``reconcile_broker``); returns whether the task queue took it. When
    it refused, the revocation still stands and the periodic
    ``reconcile_broker`` (Celery beat, ``reconcile-broker-credentials``)
    removes every revoked device from the broker on its next run.
    """
    access.require_sites(actor, [device.site_id], "revoke this device")
    with transaction.atomic():
        now = timezone.now()
        Device.objects.filter(pk=device.pk).revoke(now)
        DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(revoked_at=now)
        AuditLog.record(actor=actor, action="device.revoke", target=device, reason=reason)
    device.refresh_from_db()
    queued: list[bool] = []
    transaction.on_commit(lambda: queued.append(_queue_broker_removal(device)))
    # Outside a transaction (an API request) the callback has run by now.
    return bool(queued and queued[0])


def _queue_broker_removal(device: Device) -> bool:
    try:
        reconcile_broker.delay(device.pk)
    except OperationalError as exc:
        log.warning(
            "task queue refused the broker removal of a revoked device; the periodic reconciliation repeats it",
            extra={"device": device.device_id, "error": str(exc)},
        )
        return False
    return True


@dataclass(frozen=True)
class Assignment:
    """One device to point at a version: the bundle target it gets, and whether going back is meant."""

    device: Device
    target: str = "cpu-fp32"
    rollback: bool = False


def assign_model(
    device: Device,
    version: Any,
    *,
    actor: Any,
    target: str | None = None,
    config: dict[str, Any] | None = None,
    rollback: bool = False,
) -> int:
    """Point a device at a model version's bundle for its target; returns the new desired generation.

    The desired runtime config (thresholds, escalation policy, telemetry
    interval) is kept, with ``config`` merged over it. The document is signed
    for this device (``fleet.desired``), the bridge publishes it and the
    agent's updater converges on it. A version older than the one the device
    reports running is refused unless ``rollback``: the signed document then
    names it as an explicit rollback, the only way a device goes back.
    """
    access.require_sites(actor, [device.site_id], "assign this device a model")
    (outcome,) = assign_models(
        [Assignment(device, target or "cpu-fp32", rollback)], version, actor=actor, config=config
    ).values()
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def assign_models(
    assignments: Sequence[Assignment], version: Any, *, actor: Any, config: dict[str, Any] | None = None
) -> dict[int, int | ServiceError]:
    """``assign_model`` for many devices in a constant number of queries (a rollout stage at once).

    Returns, per device pk, its new desired generation or the ServiceError
    that refused it (no bundle for its target, expired, agent too old, an
    older version without ``rollback``); the refused ones change nothing.
    """
    bundles = {b.target: b for b in Bundle.objects.select_related("version__model").filter(version=version)}
    sequences = dict(ModelVersion.objects.filter(model_id=version.model_id).values_list("version", "sequence"))
    outcome: dict[int, int | ServiceError] = {}
    chosen: dict[int, tuple[Assignment, Bundle]] = {}
    for assignment in assignments:
        device = assignment.device
        bundle = bundles.get(assignment.target)
        try:
            if bundle is None:
                message = f"{version} has no bundle for target {assignment.target}."
                raise ServiceError("no_bundle", message, 400, fields={"target": [message]})
            _check_installable(device, bundle)
            if not assignment.rollback:
                _check_not_older(device, version, sequences)
        except ServiceError as exc:
            outcome[device.pk] = exc
            continue
        chosen[device.pk] = (assignment, bundle)
    if not chosen:
        return outcome
    with transaction.atomic():
        current = dict(Device.objects.select_for_update().filter(pk__in=chosen).values_list("pk", "desired"))
        documents = {}
        for pk, (assignment, bundle) in chosen.items():
            previous = current.get(pk) or {}
            document: dict[str, Any] = {
                "model": bundle.desired_model().model_dump(mode="json", exclude_none=True),
                "config": _merged_config(previous, config or {}),
            }
            if assignment.rollback:
                document["rollback_to"] = version.version
            documents[pk] = document
        outcome.update(
            _issue_audited(
                {pk: assignment.device for pk, (assignment, _) in chosen.items()},
                documents,
                actor=actor,
                audit=lambda pk: {
                    "action": "device.rollback" if chosen[pk][0].rollback else "device.assign_model",
                    "model": version.model.name,
                    "version": version.version,
                    "bundle_target": chosen[pk][1].target,
                },
            )
        )
    return outcome


def assign_shadow(device: Device, version: Any | None, *, actor: Any, target: str | None = None) -> int:
    """Have a device run ``version`` in shadow beside its model (None: stop); returns the new generation.

    The candidate decides the same frames without acting, and the device
    reports agreement with the model in service in its windows. Its bundle is
    checked like an install's (expired, agent too old) before it is sent.
    """
    access.require_sites(actor, [device.site_id], "assign this device a shadow model")
    (outcome,) = assign_shadows([Assignment(device, target or "cpu-fp32")], version, actor=actor).values()
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def assign_shadows(
    assignments: Sequence[Assignment], version: Any | None, *, actor: Any
) -> dict[int, int | ServiceError]:
    """``assign_shadow`` for many devices in a constant number of queries (a rollout's shadow stage)."""
    bundles = {}
    if version is not None:
        bundles = {b.target: b for b in Bundle.objects.select_related("version__model").filter(version=version)}
    outcome: dict[int, int | ServiceError] = {}
    chosen: dict[int, tuple[Assignment, Bundle | None]] = {}
    for assignment in assignments:
        bundle = bundles.get(assignment.target)
        try:
            if version is not None:
                if bundle is None:
                    message = f"{version} has no bundle for target {assignment.target}."
                    raise ServiceError("no_bundle", message, 400, fields={"target": [message]})
                _check_installable(assignment.device, bundle)
        except ServiceError as exc:
            outcome[assignment.device.pk] = exc
            continue
        chosen[assignment.device.pk] = (assignment, bundle)
    if not chosen:
        return outcome
    with transaction.atomic():
        current = dict(Device.objects.select_for_update().filter(pk__in=chosen).values_list("pk", "desired"))
        documents = {}
        for pk, (_, bundle) in chosen.items():
            document = dict(current.get(pk) or {})
            if bundle is None:
                document.pop("shadow", None)
            else:
                document["shadow"] = bundle.desired_model().model_dump(mode="json", exclude_none=True)
            documents[pk] = document
        outcome.update(
            _issue_audited(
                {pk: assignment.device for pk, (assignment, _) in chosen.items()},
                documents,
                actor=actor,
                audit=lambda pk: {
                    "action": "device.shadow" if version is not None else "device.shadow_stop",
                    "model": version.model.name if version is not None else None,
                    "version": version.version if version is not None else None,
                },
            )
        )
    return outcome


def set_runtime_config(
    devices: Sequence[Device], config: dict[str, Any], *, actor: Any, reason: str = ""
) -> dict[int, int]:
    """Merge ``config`` into each device's desired runtime config and issue its signed document.

    The model and shadow the documents name are kept; the merged config is
    checked as the wire protocol's ``RuntimeConfig`` (ValueError when it is
    not). Returns device pk -> new generation; one audit entry per device.
    """
    access.require_sites(actor, {device.site_id for device in devices}, "change these devices' configuration")
    with transaction.atomic():
        current = dict(
            Device.objects.select_for_update().filter(pk__in=[d.pk for d in devices]).values_list("pk", "desired")
        )
        documents = {}
        for device in devices:
            document = dict(current.get(device.pk) or {})
            document["config"] = _merged_config(document, config)
            documents[device.pk] = document
        return _issue_audited(
            {d.pk: d for d in devices},
            documents,
            actor=actor,
            audit=lambda pk: {"action": "device.config", "config": config, "reason": reason},
        )


def _merged_config(document: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over a desired document's runtime config, checked with the device kernel's model.

    Built with the kernel's ``RuntimeConfig``, so what is stored is what can be signed (ValueError if not).
    """
    merged = {**(document.get("config") or {}), **config}
    return protocol.RuntimeConfig.model_validate(merged).model_dump(mode="json", exclude_none=True)


def _issue_audited(
    devices: dict[int, Device],
    documents: dict[int, dict[str, Any]],
    *,
    actor: Any,
    audit: Callable[[int], dict[str, Any]],
) -> dict[int, int]:
    """Sign and store each device's new document, with one audit entry each (``audit(pk)``: action and data).

    Returns pk -> new generation; the ``Device`` objects carry it too. The caller holds the transaction.
    """
    generations = desired.issue_many(documents)
    entries = []
    for pk, device in devices.items():
        device.desired, device.desired_generation = documents[pk], generations[pk]
        entries.append(AuditLog.entry(actor=actor, target=device, generation=generations[pk], **audit(pk)))
    AuditLog.objects.bulk_create(entries, batch_size=1000)
    return generations


def _check_not_older(device: Device, version: Any, sequences: dict[str, int]) -> None:
    """Refuse to send a device back to an older version of the model it runs without saying so.

    ``sequences``: every version of the model, name -> sequence (read once for many devices).
    """
    reported = device.reported if isinstance(device.reported, dict) else {}
    if reported.get("model_name") != version.model.name or not reported.get("model_version"):
        return
    running = sequences.get(str(reported["model_version"]))
    if running is not None and version.sequence < running:
        raise ServiceError(
            "rollback_required",
            f"Device {device.device_id} runs {version.model.name} {reported['model_version']}; {version} is older. "
            "Send it back with rollback=true.",
            409,
        )


def _check_installable(device: Device, bundle: Bundle) -> None:
    """Refuse a bundle the device would refuse at install: expired, or for a newer agent than it runs.

    A device that has not reported its agent version yet is given the benefit of
    the doubt; its agent still checks ``min_agent_version`` before installing.
    """
    version = bundle.version
    expires_at = version.bundle_expires_at()
    if expires_at <= timezone.now():
        raise ServiceError("bundle_expired", f"The bundle of {version} expired at {expires_at.isoformat()}.", 400)
    reported = device.agent_version
    if not reported:
        return
    try:
        too_old = parse_version(reported) < parse_version(version.min_agent_version)
    except ValueError:
        too_old = True
    if too_old:
        raise ServiceError(
            "agent_too_old",
            f"Device {device.device_id} runs agent {reported}; "
            f"{version} needs agent {version.min_agent_version} or newer.",
            400,
        )
