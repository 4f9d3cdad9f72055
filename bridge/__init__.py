"""The MQTT bridge process: device messages in, desired state out (manage.py mqtt_bridge)."""
