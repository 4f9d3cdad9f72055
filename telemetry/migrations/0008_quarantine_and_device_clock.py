"""Quarantine of rows the periodic jobs cannot process; device clocks found ahead; a record's device time."""

from datetime import datetime, timedelta, timezone

import django.db.models.deletion
from django.db import migrations, models


def unfreeze_heartbeats(apps, schema_editor):
    """A heartbeat stored with a time from the future stayed the newest for good: bring it to now.

    From now on the bridge stores a heartbeat ahead of its receiving time at
    that time, so a later one (with a right clock) replaces it again.
    """
    Device = apps.get_model("fleet", "Device")
    now = datetime.now(timezone.utc)
    for device in Device.objects.exclude(last_heartbeat={}).only("pk", "last_heartbeat").iterator():
        beat = device.last_heartbeat
        try:
            ts = datetime.fromisoformat(beat["ts"])
            ahead = (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)) > now + timedelta(minutes=5)
        except (KeyError, TypeError, ValueError, OverflowError):
            ahead = isinstance(beat, dict) and "ts" in beat
        if ahead:
            Device.objects.filter(pk=device.pk).update(last_heartbeat={**beat, "ts": now.isoformat()})


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0002_tokens_and_audit_to_core"),
        ("telemetry", "0007_reference_baselines_to_versions"),
    ]

    operations = [
        migrations.AddField(
            model_name="telemetryrecord",
            name="device_ts",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="DeviceClock",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("offset_s", models.FloatField()),
                ("device_time", models.DateTimeField()),
                ("observed_at", models.DateTimeField()),
                ("restamped", models.PositiveBigIntegerField(default=0)),
                (
                    "device",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE, related_name="clock", to="fleet.device"
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="Quarantine",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("source", models.CharField(max_length=32)),
                ("ref", models.CharField(max_length=200)),
                ("reason", models.CharField(max_length=64)),
                ("detail", models.TextField(blank=True)),
                ("first_at", models.DateTimeField()),
                ("last_at", models.DateTimeField()),
                ("occurrences", models.PositiveBigIntegerField(default=1)),
                (
                    "device",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="fleet.device",
                    ),
                ),
            ],
            options={
                "ordering": ["-last_at"],
                "indexes": [models.Index(fields=["device", "last_at"], name="telemetry_q_device__2b5677_idx")],
                "constraints": [models.UniqueConstraint(fields=("source", "ref"), name="quarantine_unique_ref")],
            },
        ),
        migrations.RunPython(unfreeze_heartbeats, migrations.RunPython.noop),
    ]
