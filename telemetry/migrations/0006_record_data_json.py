from importlib import import_module

from django.db import migrations

import telemetry.models

# SQLite rebuilds the table to alter the field, dropping the time indexes of
# 0003; creating them again is a no-op where they survived (PostgreSQL).
_time_indexes = import_module("telemetry.migrations.0003_time_indexes")


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0005_record_device_key"),
    ]

    operations = [
        migrations.AlterField(
            model_name="telemetryrecord",
            name="data",
            field=telemetry.models.VerbatimJSONField(),
        ),
        migrations.RunPython(_time_indexes.create, migrations.RunPython.noop),
    ]
