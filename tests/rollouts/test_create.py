"""Creating a rollout: the bundle each device gets, and the tick the beat runs."""

from __future__ import annotations

import pytest
from django.conf import settings

from fleet.models import Device
from registry.models import Bundle
from rollouts import services, tasks
from rollouts.models import Rollout

pytestmark = pytest.mark.django_db

PLAN = {"stages": [{"kind": "count", "value": 1}, {"kind": "percent", "value": 100}]}


def test_int8_hardware_gets_the_int8_bundle_when_the_version_has_one(versions, fleet_on_v1, settings):
    _, v2 = versions
    settings.ROLLOUT_INT8_HARDWARE_PROFILES = ["rpi5"]
    Device.objects.filter(pk__in=[d.pk for d in fleet_on_v1[:3]]).update(hardware_profile="rpi5")
    rollout = services.create(version=v2, target={"running_model": "parts"}, plan=PLAN, actor="ci")
    assert set(rollout.devices.values_list("target", flat=True)) == {"cpu-fp32"}, "no int8 bundle yet"
    rollout.state = Rollout.ABORTED
    rollout.save()

    fp32 = Bundle.objects.get(version=v2, target="cpu-fp32")
    Bundle.objects.create(
        version=v2,
        target="cpu-int8",
        file=fp32.file.name,
        sha256=fp32.sha256,
        size=fp32.size,
        manifest_sha256=fp32.manifest_sha256,
        key_id=fp32.key_id,
    )
    rollout = services.create(version=v2, target={"running_model": "parts"}, plan=PLAN, actor="ci")

    targets = dict(rollout.devices.values_list("device__hardware_profile", "target").distinct())
    assert targets == {"rpi5": "cpu-int8", "": "cpu-fp32"}


def test_the_beat_ticks_every_running_rollout_every_fifteen_seconds(versions, fleet_on_v1):
    _, v2 = versions
    services.create(version=v2, target={"running_model": "parts"}, plan=PLAN, actor="ci")

    assert settings.CELERY_BEAT_SCHEDULE["rollouts-tick"] == {"task": "rollouts.tasks.tick", "schedule": 15.0}
    assert tasks.tick.apply().get() == 1
    assert Rollout.objects.get().state == Rollout.RUNNING
