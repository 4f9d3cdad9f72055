"""The alert engine: rules with thresholds and durations over the health checks.

A condition that starts holding creates a *pending* alert; once it has held
for the rule's ``duration_s`` the alert *opens* and channels are notified. An
operator may *acknowledge* it. When the condition no longer holds the alert
*resolves* by itself (a pending one is dropped, unannounced). Opening, acknowledging
and resolving are written to the audit log. Evaluation is idempotent: running
it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.models import AuditLog
from telemetry import drift, health, notify
from telemetry.models import Alert, AlertRule, Quarantine
from telemetry.notify import channels_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleDefault:
    threshold: float
    duration_s: int
    severity: str
    description: str
    check: Callable[[health.Context, float], health.Findings]


# Defaults for every rule; a row in AlertRule (admin) overrides threshold,
# duration, severity or switches the rule off.
DEFAULT_RULES: dict[str, RuleDefault] = {
    "offline": RuleDefault(
        3,
        0,
        "critical",
        "Silent for more than N heartbeat intervals, or reported offline",
        health.offline,
    ),
    "temperature_high": RuleDefault(
        80.0,
        300,
        "warning",
        "Temperature at or above N degrees C",
        health.temperature_high,
    ),
    "cpu_throttled": RuleDefault(
        0.7,
        300,
        "warning",
        "CPU clock below N times its daily peak",
        health.cpu_throttled,
    ),
    "disk_full": RuleDefault(
        90.0,
        0,
        "warning",
        "Disk use at or above N percent",
        health.disk_full,
    ),
    "outbox_backlog": RuleDefault(
        1000,
        300,
        "warning",
        "Telemetry outbox deeper than N records",
        health.outbox_backlog,
    ),
    "fallback_active": RuleDefault(
        1,
        60,
        "warning",
        "Fallback model active",
        health.fallback_active,
    ),
    "desired_expired": RuleDefault(
        1,
        0,
        "critical",
        "The device's desired document expired without a newer one reaching it (updates withheld)",
        health.desired_expired,
    ),
    "confidence_drift": RuleDefault(
        drift.ALERT,
        0,
        "warning",
        "Confidence PSI against the baseline at or above N",
        health.confidence_drift,
    ),
    "class_mix_drift": RuleDefault(
        drift.ALERT,
        0,
        "warning",
        "Class-mix PSI against the baseline at or above N",
        health.class_mix_drift,
    ),
    "latency_outlier": RuleDefault(
        3.5,
        600,
        "warning",
        "p95 latency robust z-score against peers at or above N",
        health.latency_outlier,
    ),
    "confidence_outlier": RuleDefault(
        3.5,
        600,
        "warning",
        "Mean confidence robust z-score at or below -N",
        health.confidence_outlier,
    ),
    "escalation_outlier": RuleDefault(
        3.5,
        600,
        "warning",
        "Escalation-rate robust z-score at or above N",
        health.escalation_outlier,
    ),
    "quarantined": RuleDefault(
        1,
        0,
        "warning",
        "N or more of the device's stored rows quarantined within the hour (a job could not process them)",
        health.quarantined,
    ),
    "clock_skew": RuleDefault(
        300,
        0,
        "warning",
        "Device clock N seconds or more ahead (its times are replaced by the receiving time)",
        health.clock_skew,
    ),
}


def register(kind: str, default: RuleDefault) -> None:
    """Add a rule whose check lives in an app above telemetry (its ``AppConfig.ready``); once per kind."""
    if kind in DEFAULT_RULES and DEFAULT_RULES[kind] is not default:
        raise ValueError(f"an alert rule {kind!r} is registered already")
    DEFAULT_RULES[kind] = default


def ensure_rules() -> dict[str, AlertRule]:
    """Rule rows for every kind, created with the defaults when missing."""
    rules = {rule.kind: rule for rule in AlertRule.objects.all()}
    for kind, default in DEFAULT_RULES.items():
        if kind not in rules:
            rules[kind], _ = AlertRule.objects.get_or_create(
                kind=kind,
                defaults={
                    "threshold": default.threshold,
                    "duration_s": default.duration_s,
                    "severity": default.severity,
                    "description": default.description,
                },
            )
    return rules


@dataclass
class Evaluation:
    pending: int = 0
    opened: int = 0
    resolved: int = 0
    # Rules whose evaluation raised: quarantined (source "alerts"), their live alerts left as they were.
    failed: int = 0


def evaluate(now: datetime | None = None) -> Evaluation:
    now = now or timezone.now()
    ctx = health.Context(now)
    result = Evaluation()
    for kind, rule in ensure_rules().items():
        try:
            with transaction.atomic():
                _evaluate_rule(ctx, kind, rule, now, result)
        except Exception as exc:
            # One rule that cannot be evaluated (a bug, a row it cannot read)
            # must not keep every other rule from opening or resolving.
            log.exception("alert rule failed; the others go on", extra={"rule": kind})
            Quarantine.note("alerts", f"rule:{kind}", type(exc).__name__, str(exc)[:2000])
            result.failed += 1
    return result


def _evaluate_rule(ctx: health.Context, kind: str, rule: AlertRule, now: datetime, result: Evaluation) -> None:
    default = DEFAULT_RULES.get(kind)
    findings = default.check(ctx, rule.threshold) if default and rule.enabled else {}
    live = {a.device_id: a for a in Alert.objects.filter(rule=rule).exclude(state=Alert.State.RESOLVED)}
    for device_pk, finding in findings.items():
        alert = live.get(device_pk) or _start(rule, device_pk, finding, now)
        if alert is None:
            continue
        if alert.value != finding.value or alert.details != finding.details:
            alert.value, alert.details = finding.value, finding.details
            Alert.objects.filter(pk=alert.pk).update(value=finding.value, details=finding.details)
        if alert.state == Alert.State.PENDING:
            if (now - alert.since).total_seconds() >= rule.duration_s and alert.open(now):
                _announce(alert, "opened")
                result.opened += 1
            else:
                result.pending += 1
    for device_pk, alert in live.items():
        if device_pk in findings:
            continue
        if alert.state == Alert.State.PENDING:
            # A blip shorter than the rule's duration leaves no trace.
            Alert.objects.filter(pk=alert.pk, state=Alert.State.PENDING).delete()
        elif alert.resolve(now):
            _announce(alert, "resolved")
            result.resolved += 1


def _start(rule: AlertRule, device_pk: int, finding: health.Finding, now: datetime) -> Alert | None:
    try:
        with transaction.atomic():
            return Alert.objects.create(
                rule=rule, device_id=device_pk, since=now, value=finding.value, details=finding.details
            )
    except IntegrityError:
        # Another evaluator created the live alert first; it carries on from there.
        return None


def _announce(alert: Alert, event: str) -> None:
    alert = Alert.objects.select_related("rule", "device", "device__site").get(pk=alert.pk)
    # The device is the audit target (AuditLog keys targets by device_id); the alert id rides in the data.
    AuditLog.record(
        actor=None,
        action=f"alert.{event}",
        target=alert.device,
        alert=alert.pk,
        rule=alert.rule.kind,
        value=alert.value,
    )
    log.info(
        "alert",
        extra={"rule": alert.rule.kind, "event": event, "device": alert.device.device_id, "value": alert.value},
    )
    for channel in channels_for(alert):
        transaction.on_commit(
            lambda c=channel.pk: notify.send.delay(alert.pk, event, c)  # type: ignore[misc]
        )
