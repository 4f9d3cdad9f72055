"""API tokens and the audit log now belong to the core app (core.0001 takes over their tables)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0001_initial"),
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ApiToken"),
                migrations.DeleteModel(name="AuditLog"),
            ],
            database_operations=[],
        ),
    ]
