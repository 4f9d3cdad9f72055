"""Escalation: uncertain frames are queued on disk (bounded), rate-limited, and uploaded with retries."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.capture import Frame
from agent.config import EscalationSettings
from agent.escalation import DiskQueue, EscalationClient, TokenBucket
from agent.inference import SessionHolder
from agent.kernel.decode import Result
from agent.pipeline import Pipeline
from tests.agent.conftest import RED, ListSource, RecordingServer, solid

# A site that lets frames go whole (the agent's own default, before its desired state says, is no pixels).
FAST = {
    "privacy": "full",
    "backoff_s": 0.01,
    "backoff_max_s": 0.02,
    "max_frames_per_s": 1000,
    "burst": 1000,
    "timeout_s": 5,
}


def client(tmp_path: Path, server: RecordingServer | str, **settings: Any) -> EscalationClient:
    url = server if isinstance(server, str) else server.url
    return EscalationClient(
        EscalationSettings.model_validate({**FAST, **settings}),
        server_url=url,
        device_id="dev-1",
        secret="s3cret",
        queue_dir=tmp_path / "escalations",
    )


def uncertain(i: int = 1, confidence: float = 0.3) -> tuple[Frame, Result]:
    frame = Frame(image=solid(RED), index=i, ts=1_700_000_000.0 + i, name=f"f{i}")
    return frame, Result(label="crack", confidence=confidence, model_name="parts", model_version="1.2.0")


def parts_of(body: bytes, content_type: str) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {part.get_param("name", header="content-disposition"): part.get_content() for part in message.iter_parts()}


def test_only_frames_below_the_threshold_are_escalated(tmp_path: Path, http_server: RecordingServer) -> None:
    # No fallback sample of confident frames here (1 % by default, drawn at random): its own test follows.
    escalation = client(tmp_path, http_server, fallback_share=0)

    assert escalation.offer(*uncertain(1, 0.3), model_default=0.6)
    assert not escalation.offer(*uncertain(2, 0.7), model_default=0.6)
    escalation.set_threshold(0.8)  # the desired state overrides the manifest
    assert escalation.offer(*uncertain(3, 0.7), model_default=0.6)
    escalation.set_threshold(None)
    assert not escalation.offer(*uncertain(4, 0.7), model_default=0.6)
    with pytest.raises(ValueError, match="outside"):
        escalation.set_threshold(1.5)


def test_a_frame_is_uploaded_as_multipart_with_the_device_credentials(
    tmp_path: Path, http_server: RecordingServer
) -> None:
    escalation = client(tmp_path, http_server)
    escalation.start()

    escalation.offer(*uncertain(7), model_default=0.6)
    assert escalation.wait_for(lambda c: c.uploaded == 1, 10)
    escalation.stop()

    request = http_server.requests[0]
    assert request.path == "/api/v1/escalations/"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"dev-1:s3cret").decode()
    parts = parts_of(request.body, request.headers["Content-Type"])
    metadata = json.loads(parts["metadata"])
    assert metadata["model_version"] == "1.2.0"
    assert metadata["result"]["label"] == "crack"
    assert metadata["ts"].startswith("2023-11-14T22:13:27")
    image = cv2.imdecode(np.frombuffer(parts["frame"], dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (48, 64, 3) and image[..., 2].mean() > 240  # still red after JPEG
    assert len(escalation.queue) == 0


def test_uploads_are_retried_while_the_server_fails_and_complete_when_it_recovers(
    tmp_path: Path, http_server: RecordingServer
) -> None:
    http_server.status = 503
    escalation = client(tmp_path, http_server)
    escalation.start()
    for i in range(3):
        escalation.offer(*uncertain(i), model_default=0.6)

    assert escalation.wait_for(lambda c: c.failed_attempts >= 3, 10)
    assert escalation.counters.uploaded == 0 and len(escalation.queue) == 3  # nothing lost meanwhile
    http_server.status = 201
    assert escalation.wait_for(lambda c: c.uploaded == 3, 10)
    escalation.stop()

    uploaded = [json.loads(parts_of(r.body, r.headers["Content-Type"])["metadata"]) for r in http_server.requests]
    # Oldest first, each by its name and capture time (ms): unique per capture.
    assert [m["frame"] for m in uploaded if m][-3:] == [f"f{i}@{(1_700_000_000 + i) * 1000}" for i in range(3)]


def test_an_unreachable_server_is_retried_and_the_frames_stay_queued(tmp_path: Path) -> None:
    escalation = client(tmp_path, "http://127.0.0.1:9")  # discard port: connection refused
    escalation.start()
    escalation.offer(*uncertain(), model_default=0.6)

    assert escalation.wait_for(lambda c: c.failed_attempts >= 2, 10)
    escalation.stop()

    assert len(escalation.queue) == 1


def test_a_frame_the_server_refuses_for_good_is_dropped_and_counted(
    tmp_path: Path, http_server: RecordingServer
) -> None:
    http_server.status = 400
    escalation = client(tmp_path, http_server)
    escalation.start()

    escalation.offer(*uncertain(), model_default=0.6)
    assert escalation.wait_for(lambda c: c.rejected == 1, 10)
    escalation.stop()

    assert len(escalation.queue) == 0 and escalation.counters.uploaded == 0


def test_the_disk_queue_is_bounded_in_bytes_dropping_the_oldest(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, max_bytes=1000)
    payload = b"x" * 300

    dropped = [queue.put({"frame": f"f{i}"}, payload) for i in range(5)]

    assert dropped == [0, 0, 0, 1, 1]
    assert len(queue) == 3 and queue.size_bytes <= 1000
    assert queue.peek()[1] == {"frame": "f2"}  # type: ignore[index]
    assert queue.put({"frame": "huge"}, b"x" * 2000) == -1  # larger than the whole queue


def test_the_disk_queue_survives_a_restart_and_ignores_half_written_files(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, max_bytes=10_000)
    queue.put({"frame": "a"}, b"jpeg-a")
    queue.put({"frame": "b"}, b"jpeg-b")
    (tmp_path / "0000000000000003.tmp").write_bytes(b"half")

    reopened = DiskQueue(tmp_path, max_bytes=10_000)

    assert len(reopened) == 2
    path, metadata, jpeg = reopened.peek()  # type: ignore[misc]
    assert (metadata, jpeg) == ({"frame": "a"}, b"jpeg-a")
    reopened.remove(path)
    reopened.put({"frame": "c"}, b"jpeg-c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000000000000002.esc", "0000000000000003.esc"]


def test_a_corrupt_queued_file_is_discarded_not_fatal(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, max_bytes=10_000)
    queue.put({"frame": "a"}, b"jpeg")
    next(tmp_path.glob("*.esc")).write_bytes(b"no newline and not json")
    queue.put({"frame": "b"}, b"jpeg")

    assert queue.peek()[1] == {"frame": "b"}  # type: ignore[index]
    assert len(queue) == 1


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, capacity=3, clock=lambda: now[0])

    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert [bucket.try_take(), bucket.try_take()] == [True, False]
    bucket.take(5)  # a big item goes into debt ...
    assert bucket.wait_time() == pytest.approx(2.5)  # ... and is paid for before the next


def test_escalations_over_the_rate_are_counted_not_queued(tmp_path: Path, http_server: RecordingServer) -> None:
    escalation = client(tmp_path, http_server, max_frames_per_s=0.001, burst=2)

    taken = [escalation.offer(*uncertain(i), model_default=0.6) for i in range(5)]

    assert taken == [True, True, False, False, False]
    assert (escalation.counters.offered, escalation.counters.rate_limited) == (5, 3)


def test_uploads_are_held_to_the_bandwidth_budget(tmp_path: Path, http_server: RecordingServer) -> None:
    # 1 KiB/s and frames of ~1 KiB: the second upload must wait for the budget; the test only
    # checks that the wait is asked for, through the bucket the uploader consults.
    escalation = client(tmp_path, http_server, bandwidth_bytes_per_s=1024)
    escalation._bandwidth.take(10 * 1024)  # as if ten seconds' worth had just been sent

    assert escalation._bandwidth.wait_time() > 5
    escalation.start()
    escalation.offer(*uncertain(), model_default=0.6)
    escalation.stop()
    assert http_server.requests == []  # still waiting out the budget when stopped
    assert len(escalation.queue) == 1


def test_escalation_never_delays_the_local_decision(tmp_path: Path) -> None:
    """The writer thread is stuck (a slow disk); inference carries on and the hand-off drops the oldest."""
    escalation = client(tmp_path, "http://127.0.0.1:9", handoff_size=2)
    stuck, entered = threading.Event(), threading.Event()
    real_write = escalation._write

    def slow_write(*args: Any) -> None:
        entered.set()
        assert stuck.wait(10)
        real_write(*args)

    escalation._write = slow_write  # type: ignore[method-assign]

    class Unsure:
        name, version = "m", "1"

        def infer(self, image: Any) -> Result:
            return Result(label="crack", confidence=0.2)

    decided: list[int] = []
    source = ListSource([solid(RED)] * 10, gates={1: entered})
    pipeline = Pipeline(
        source, SessionHolder(Unsure()), lossless=True, escalation=escalation, on_result=lambda f, r: decided.append(1)
    ).start()

    assert pipeline.wait(10)
    assert len(decided) == 10  # all decided while the writer is stuck
    assert pipeline.take_window()["escalations"] == 10
    assert escalation.counters.dropped == 10 - 1 - 2  # one being written, two waiting
    stuck.set()
    pipeline.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, the certificate doubling as the device's trust store."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "control plane")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_uploads_go_over_https_verified_against_the_device_trust_store(tmp_path: Path) -> None:
    import http.server
    import ssl

    cert, key = self_signed(tmp_path)
    received = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(201)
            self.end_headers()
            received.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        trusted = EscalationClient(
            EscalationSettings.model_validate(FAST),
            server_url=url,
            device_id="dev-1",
            secret="s",
            queue_dir=tmp_path / "trusted",
            ca_file=cert,
        )
        trusted.start()
        trusted.offer(*uncertain(), model_default=0.6)
        assert trusted.wait_for(lambda c: c.uploaded == 1, 10)
        trusted.stop()
        assert received.is_set()

        # Without the trust store the same server is refused, and the frame waits on disk.
        untrusted = client(tmp_path, url)
        untrusted.start()
        untrusted.offer(*uncertain(), model_default=0.6)
        assert untrusted.wait_for(lambda c: c.failed_attempts >= 1, 10)
        untrusted.stop()
        assert untrusted.counters.uploaded == 0 and len(untrusted.queue) == 1
    finally:
        server.shutdown()
        server.server_close()


def answer(frame: str = "f1", label: str = "crack", edge: str | None = "scratch", **extra: Any) -> dict[str, Any]:
    return {
        "frame": frame,
        "escalation": 41,
        "label": label,
        "confidence": 0.97,
        "model_name": "parts-cloud",
        "model_version": "3.1.0",
        "edge_label": edge,
        "answered_at": "2026-12-05T07:00:00+00:00",
        **extra,
    }


def test_the_clouds_answer_is_kept_beside_the_devices_decision_and_counted(tmp_path: Path) -> None:
    escalation = client(tmp_path, "http://127.0.0.1:9")
    assert escalation.record_answer(answer()) == {
        "frame": "f1",
        "escalation": 41,
        "edge_label": "scratch",
        "cloud_label": "crack",
        "cloud_confidence": 0.97,
        "agrees": False,
    }
    assert escalation.record_answer(answer("f2", label="ok", edge="ok", escalation=42))["agrees"] is True
    # Delivered again (QoS 1): kept once.
    assert escalation.record_answer(answer("f2", label="ok", edge="ok", escalation=42))["duplicate"] is True
    lines = (tmp_path / "escalations" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == ["f1", "f2"]
    assert (escalation.counters.answered, escalation.counters.agreed) == (2, 1)
    # The journal is not a queued frame: the upload queue still holds nothing.
    assert len(escalation.queue) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"confidence": float("nan")},
        {"confidence": 1.5},
        {"answered_at": "2026-12-05T07:00:00"},  # no time zone
        {"frame": "x" * 201},
        {"escalation": 2**64},
        {"label": None},
    ],
)
def test_a_malformed_answer_is_refused_and_records_nothing(tmp_path: Path, bad: dict[str, Any]) -> None:
    escalation = client(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(ValueError):
        escalation.record_answer(answer(**bad))
    assert not (tmp_path / "escalations" / "answers.jsonl").exists() and escalation.counters.answered == 0


def test_the_answer_journal_is_bounded_to_two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.escalation.ANSWERS_MAX_BYTES", 1000)
    escalation = client(tmp_path, "http://127.0.0.1:9")
    for i in range(40):
        escalation.record_answer(answer(f"f{i}", escalation=i))
    folder = tmp_path / "escalations"
    assert sorted(p.name for p in folder.glob("answers.jsonl*")) == ["answers.jsonl", "answers.jsonl.1"]
    assert all(p.stat().st_size <= 1000 for p in folder.glob("answers.jsonl*"))
    assert json.loads((folder / "answers.jsonl").read_text().splitlines()[-1])["frame"] == "f39"


def test_a_share_of_confident_frames_goes_up_too_marked_as_fallback_samples(
    tmp_path: Path, http_server: RecordingServer
) -> None:
    escalation = client(tmp_path, http_server, fallback_share=0.5, handoff_size=1000)
    escalation.start()
    confident = [escalation.offer(*uncertain(i, confidence=0.95), model_default=0.6) for i in range(200)]
    unsure = escalation.offer(*uncertain(999, confidence=0.3), model_default=0.6)
    taken = sum(confident)
    assert 60 <= taken <= 140 and unsure  # about half: a sample, not every one
    assert escalation.wait_for(lambda c: c.uploaded == taken + 1, 10)
    escalation.stop()
    sent = [json.loads(parts_of(r.body, r.headers["Content-Type"])["metadata"]) for r in http_server.requests]
    reasons = {(m["reason"], m["sample_rate"]) for m in sent if m["frame"].startswith("f999@")}
    assert reasons == {("unsure", 1.0)}
    assert {(m["reason"], m["sample_rate"]) for m in sent if not m["frame"].startswith("f999@")} == {("fallback", 0.5)}
    assert escalation.counters.fallback == taken


def test_without_a_fallback_share_confident_frames_stay_on_the_device(tmp_path: Path) -> None:
    escalation = client(tmp_path, "http://127.0.0.1:9", fallback_share=0)
    assert not any(escalation.offer(*uncertain(i, confidence=0.95), model_default=0.6) for i in range(100))


def test_a_metadata_only_site_gets_no_pixels_and_a_crop_site_only_the_detection(
    tmp_path: Path, http_server: RecordingServer
) -> None:
    from agent.kernel.decode import Detection

    escalation = client(tmp_path, http_server, handoff_size=100)
    escalation.start()
    frame = Frame(image=np.zeros((240, 320, 3), np.uint8), index=1, ts=1_700_000_000.0, name="wide")
    classified = Result(label="crack", confidence=0.3, model_name="parts", model_version="1.2.0")
    detected = Result(
        label="crack",
        confidence=0.3,
        detections=[Detection("crack", 1, 0.3, (100.0, 50.0, 140.0, 90.0)), Detection("ok", 0, 0.9, (0, 0, 10, 10))],
    )
    escalation.set_privacy("metadata")
    escalation.offer(frame, classified, model_default=0.6)
    assert escalation.wait_for(lambda c: c.uploaded == 1, 10)
    escalation.set_privacy("crop")
    escalation.offer(Frame(frame.image, 2, frame.ts + 1, "wide"), detected, model_default=0.6)
    escalation.offer(Frame(frame.image, 3, frame.ts + 2, "wide"), classified, model_default=0.6)
    assert escalation.wait_for(lambda c: c.uploaded == 3, 10)
    escalation.stop()

    sent = [parts_of(r.body, r.headers["Content-Type"]) for r in http_server.requests]
    metadata_only, cropped, classifier_on_crop_site = sent[-3:]
    assert set(metadata_only) == {"metadata"} and "crop" not in json.loads(metadata_only["metadata"])
    # Around the least sure detection's box, enlarged by 1.3 about its centre: 52 px square at (94, 44).
    assert json.loads(cropped["metadata"])["crop"] == [94, 44, 52, 52]
    image = cv2.imdecode(np.frombuffer(cropped["frame"], dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (52, 52)
    # A classifier's frame has no detection to crop around: it goes without pixels.
    assert set(classifier_on_crop_site) == {"metadata"}
    with pytest.raises(ValueError):
        escalation.set_privacy("blurred")


def test_the_desired_state_sets_a_per_device_budget_and_its_bounds_hold(tmp_path: Path) -> None:
    from agent.kernel import protocol

    settings = EscalationSettings.model_validate({**FAST, "max_frames_per_s": 2, "bandwidth_bytes_per_s": 65536})
    escalation = EscalationClient(
        settings, server_url="http://127.0.0.1:9", device_id="d", secret="s", queue_dir=tmp_path / "q"
    )
    config = protocol.RuntimeConfig.model_validate(
        {"escalation_max_frames_per_s": 0.2, "escalation_bandwidth_bytes_per_s": 8192}
    )
    escalation.set_budget(config.escalation_max_frames_per_s, config.escalation_bandwidth_bytes_per_s)
    assert (escalation._frames.rate, escalation._bandwidth.rate) == (0.2, 8192)
    escalation.set_budget(None, None)  # the desired state stopped saying: the agent's own config again
    assert (escalation._frames.rate, escalation._bandwidth.rate) == (2, 65536)
    for bad in (
        {"escalation_max_frames_per_s": 0},
        {"escalation_bandwidth_bytes_per_s": 2e9},
        {"escalation_max_frames_per_s": float("nan")},
        {"escalation_privacy": "blurred"},
    ):
        with pytest.raises(ValueError):
            protocol.RuntimeConfig.model_validate(bad)


def test_a_reconnect_wakes_the_uploader_out_of_a_long_backoff(tmp_path: Path, http_server: RecordingServer) -> None:
    http_server.status = 503
    escalation = client(tmp_path, http_server, backoff_s=60, backoff_max_s=600)
    escalation.start()
    escalation.offer(*uncertain(1), model_default=0.6)
    assert escalation.wait_for(lambda c: c.failed_attempts >= 1, 10)
    assert escalation.has_backlog()
    http_server.status = 201
    escalation.wake()  # the link came back: no minute-long wait
    assert escalation.wait_for(lambda c: c.uploaded == 1, 5)
    assert not escalation.has_backlog()
    escalation.stop()
