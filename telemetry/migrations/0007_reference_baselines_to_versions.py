"""A version's reference distribution now lives on the version (registry); move the stored ones there."""

from django.db import migrations


def forwards(apps, schema_editor):
    Baseline = apps.get_model("telemetry", "Baseline")
    ModelVersion = apps.get_model("registry", "ModelVersion")
    for row in Baseline.objects.filter(source="reference"):
        ModelVersion.objects.filter(
            model__name=row.model_name, version=row.model_version, reference_distribution__isnull=True
        ).update(reference_distribution={"confidence": row.confidence, "classes": row.classes})
    Baseline.objects.filter(source="reference").delete()


def backwards(apps, schema_editor):
    Baseline = apps.get_model("telemetry", "Baseline")
    ModelVersion = apps.get_model("registry", "ModelVersion")
    for version in ModelVersion.objects.exclude(reference_distribution=None).select_related("model"):
        reference = version.reference_distribution
        Baseline.objects.update_or_create(
            model_name=version.model.name,
            model_version=version.version,
            defaults={
                "source": "reference",
                "confidence": reference["confidence"],
                "classes": reference.get("classes", {}),
                "frames": sum(reference["confidence"]),
            },
        )


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0006_record_data_json"),
        ("registry", "0004_version_reference_distribution"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
