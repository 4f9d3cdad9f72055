"""Time indexes for retention and rollups: BRIN on PostgreSQL, B-tree elsewhere.

Telemetry rows arrive roughly in time order, so a BRIN index (a few pages
summarising block ranges) finds a time range as well as a B-tree a thousand
times its size, and costs the insert path almost nothing. SQLite has no BRIN;
the demo gets ordinary indexes.
"""

from django.db import migrations

_INDEXES = [
    ("telemetry_record_received_brin", "telemetry_telemetryrecord", "received_at"),
    ("telemetry_record_recorded_brin", "telemetry_telemetryrecord", "recorded_at"),
    ("telemetry_windowrollup_bucket_brin", "telemetry_windowrollup", "bucket"),
    ("telemetry_heartbeatrollup_bucket_brin", "telemetry_heartbeatrollup", "bucket"),
    ("telemetry_deviceevent_at_brin", "telemetry_deviceevent", "at"),
]


def create(apps, schema_editor):
    using = "USING brin" if schema_editor.connection.vendor == "postgresql" else ""
    for name, table, column in _INDEXES:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} {using} ({column})")


def drop(apps, schema_editor):
    for name, _, _ in _INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0002_rollups_alerts_stats")]

    operations = [migrations.RunPython(create, drop)]
