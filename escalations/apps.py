from django.apps import AppConfig


class EscalationsConfig(AppConfig):
    name = "escalations"
    verbose_name = "Cloud escalation and review"

    def ready(self) -> None:
        # The alert rule's check reads escalations; telemetry's evaluator runs every registered rule.
        from escalations import health
        from telemetry import alerts

        alerts.register("cloud_fallback_disagreement", health.RULE)
