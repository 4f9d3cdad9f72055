from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
        ("fleet", "0002_tokens_and_audit_to_core"),
    ]

    operations = [
        migrations.AlterModelTable(name="apitoken", table="core_apitoken"),
        migrations.AlterModelTable(name="auditlog", table="core_auditlog"),
    ]
