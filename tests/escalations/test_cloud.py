"""The cloud worker answers escalated frames with the project's cloud classifier, in dynamic batches.

Frames arrive through the real upload endpoint from a device; the cloud model
is the project's `cloud-classifier`, published to the registry as CI would;
each answer is stored beside the edge's, decides whether the frame waits for
review, and is queued for the device as an `escalation_result` command.
"""

from __future__ import annotations

import pytest

from agent.kernel import protocol
from escalations import answering, cloud
from escalations.models import Escalation, EscalationState
from fleet.models import DeviceCommand

pytestmark = pytest.mark.django_db


def test_every_waiting_frame_is_answered_in_batches_no_larger_than_the_maximum(uploaded, settings) -> None:
    settings.CLOUD_MAX_BATCH = 4
    settings.CLOUD_MAX_QUEUE_DELAY_MS = 0
    rows = uploaded(10)

    batches = answering.answer_waiting()

    assert [b.size for b in batches] == [4, 4, 2]
    answered = Escalation.objects.filter(pk__in=[r.pk for r in rows])
    assert all(r.cloud_label in {"ok", "crack", "missing_hole", "scratch"} for r in answered)
    assert all(0.0 <= r.cloud_confidence <= 1.0 and r.answered_at for r in answered)
    assert {r.cloud_model_version for r in answered} == {"cloud-classifier@1.0.0"}
    assert not answered.filter(state=EscalationState.AWAITING_CLOUD).exists()
    # Nothing is left for a second run.
    assert answering.answer_waiting() == []


def test_both_answers_are_kept_disagreements_wait_for_review_and_the_device_gets_the_clouds(uploaded, settings) -> None:
    settings.CLOUD_MAX_QUEUE_DELAY_MS = 0
    settings.CLOUD_REVIEW_BELOW_PCT = 0  # only disagreement sends a frame to review here
    rows = uploaded(12, edge_label="ok")

    answering.answer_waiting()

    for row in Escalation.objects.filter(pk__in=[r.pk for r in rows]):
        assert row.label == "ok"  # the edge's answer stays as it came
        expected = EscalationState.ANSWERED if row.cloud_label == "ok" else EscalationState.REVIEW
        assert row.state == expected
        command = DeviceCommand.objects.get(device=row.device, args__frame=row.frame_id)
        sent = protocol.EscalationAnswer.model_validate(command.args)
        assert (command.name, sent.label, sent.edge_label, sent.escalation) == (
            "escalation_result",
            row.cloud_label,
            "ok",
            row.pk,
        )
    # The rendered crops are mostly defects: the cloud disagrees with an edge that called them all ok.
    assert Escalation.objects.filter(state=EscalationState.REVIEW).count() >= 6


def test_a_claimed_frame_is_not_answered_twice_and_a_dead_workers_claim_is_taken_again(uploaded, settings) -> None:
    settings.CLOUD_MAX_BATCH = 3
    uploaded(5)
    first = answering.claim()
    second = answering.claim()
    assert len(first) == 3 and len(second) == 2
    assert not {r.pk for r in first} & {r.pk for r in second}
    assert answering.claim() == []
    # Both workers died: after the claim timeout their frames are claimable again, oldest first.
    later = first[0].received_at + 2 * answering.CLAIM_TIMEOUT
    assert [r.pk for r in answering.claim(now=later)] == [r.pk for r in first]
    assert [r.pk for r in answering.claim(now=later)] == [r.pk for r in second]


def test_a_frame_the_cloud_model_cannot_read_goes_to_review_without_an_answer(uploaded, settings) -> None:
    settings.CLOUD_MAX_QUEUE_DELAY_MS = 0
    (row,) = uploaded(1)
    row.image_file().write_bytes(b"not an image any more")

    answering.answer_waiting()

    row.refresh_from_db()
    assert row.state == EscalationState.REVIEW and row.cloud_label is None and row.answered_at is not None
    assert not DeviceCommand.objects.filter(device=row.device).exists()


def test_the_cloud_model_is_loaded_once_per_worker_and_reloaded_when_its_version_changes(cloud_model) -> None:
    first = cloud.load()
    assert cloud.load() is first
    assert (first.name, first.version, first.batches) == ("cloud-classifier", "1.0.0", True)
    assert cloud.providers()[-1] == "CPUExecutionProvider"


def test_without_a_published_cloud_model_the_worker_says_so(db: None) -> None:
    with pytest.raises(Exception, match="No published cloud model"):
        cloud.current_version()
