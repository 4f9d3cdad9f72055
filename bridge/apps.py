from django.apps import AppConfig


class BridgeConfig(AppConfig):
    name = "bridge"
