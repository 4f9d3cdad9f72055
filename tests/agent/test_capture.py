"""Frames in: sources, sampling, and the drop-oldest queue that keeps capture off inference's back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.capture import Capture, CaptureError, Closed, Frame, FrameQueue, ImageFolderSource, open_source
from agent.inference import SessionHolder
from agent.kernel.decode import Result
from agent.pipeline import Pipeline
from tests.agent.conftest import BLUE, GREEN, RED, ListSource, solid


def frame(index: int) -> Frame:
    return Frame(image=np.zeros((1, 1, 3), dtype=np.uint8), index=index, ts=0.0)


def test_a_full_queue_drops_its_oldest_frame_and_counts_it() -> None:
    queue = FrameQueue(2)
    for i in range(1, 6):
        queue.put(frame(i))

    assert queue.dropped == 3
    assert [queue.get(0).index, queue.get(0).index] == [4, 5]  # type: ignore[union-attr]


def test_a_closed_queue_hands_out_what_it_holds_then_says_closed() -> None:
    queue = FrameQueue(2)
    queue.put(frame(1))
    queue.close()

    assert queue.get(0).index == 1  # type: ignore[union-attr]
    with pytest.raises(Closed):
        queue.get(0)
    with pytest.raises(Closed):
        queue.put(frame(2))


class SlowModel:
    """Blocks on its first frame until released; tells when it has started one."""

    name, version = "slow", "1"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.seen: list[int] = []

    def infer(self, image: np.ndarray) -> Result:
        self.seen.append(int(image[0, 0, 0]))
        self.started.set()
        assert self.release.wait(10), "the test never released the model"
        return Result(label="x", confidence=1.0)


def test_when_inference_falls_behind_the_oldest_frames_are_dropped_and_counted() -> None:
    model = SlowModel()
    images = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(10)]
    # Frame 1 is read only once the model is busy with frame 0, so what is dropped is exact.
    source = ListSource(images, gates={1: model.started})
    pipeline = Pipeline(source, SessionHolder(model), queue_size=2).start()

    assert pipeline.capture.finished.wait(10), "capture must finish while inference is stuck"
    model.release.set()
    assert pipeline.wait(10)
    pipeline.stop()

    # The frame in flight, then the two newest; the seven in between were dropped.
    assert model.seen == [0, 8, 9]
    assert pipeline.counters()["dropped"] == 7
    assert pipeline.take_window()["dropped_frames"] == 7
    assert source.closed


def test_every_nth_frame_is_kept() -> None:
    source = ListSource([solid(RED)] * 10)
    capture = Capture(source, FrameQueue(1), every_nth=3)

    kept = [f.index for f in capture.frames()]

    assert kept == [1, 2, 3, 4]  # frames 1, 4, 7, 10 of the source
    assert (capture.read_frames, capture.skipped) == (10, 6)


def test_a_live_source_over_the_frame_rate_cap_is_read_and_discarded() -> None:
    now = [0.0]

    class Camera(ListSource):
        live = True

        def read(self) -> tuple[np.ndarray, str] | None:
            now[0] += 0.2  # the camera delivers 5 frames/s
            item = super().read()
            if item is None:
                capture.stop()  # a camera never ends by itself; the test does
            return item

    capture = Capture(Camera([solid(RED)] * 10), FrameQueue(1), max_fps=2.0, clock=lambda: now[0])

    kept = [f.index for f in capture.frames()]

    # Read at t=0.2, 0.4, ... 2.0; kept at 0.2, 0.8 (first >= 0.7), 1.4, 2.0: 4 of 10.
    assert kept == [1, 2, 3, 4]
    assert capture.skipped == 6


def test_an_image_folder_is_read_in_name_order_skipping_unreadable_files(tmp_path: Path) -> None:
    for name, colour in (("b.png", GREEN), ("a.png", RED), ("c.jpg", BLUE)):
        cv2.imwrite(str(tmp_path / name), solid(colour))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")

    source = ImageFolderSource(tmp_path)
    names = []
    while (item := source.read()) is not None:
        names.append(item[1])

    assert names == ["a.png", "b.png", "c.jpg"]
    assert source.unreadable == 1


def test_an_image_folder_can_loop_forever(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), solid(RED))
    cv2.imwrite(str(tmp_path / "b.png"), solid(GREEN))
    source = open_source(str(tmp_path), loop=True)

    names = [source.read()[1] for _ in range(5)]  # type: ignore[index]

    assert names == ["a.png", "b.png", "a.png", "b.png", "a.png"]


def test_a_video_file_is_a_source(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for colour in (RED, GREEN, BLUE):
        writer.write(solid(colour))
    writer.release()

    source = open_source(str(path))
    frames = []
    while (item := source.read()) is not None:
        frames.append(item[0])
    source.close()

    assert len(frames) == 3
    assert frames[0].shape == (48, 64, 3)
    assert frames[2][..., 0].mean() > 200  # blue, within JPEG error


def test_an_unknown_source_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="not a camera index, a stream URL, a file or a folder"):
        open_source(str(tmp_path / "missing"))
    with pytest.raises(CaptureError, match="no images"):
        open_source(str(tmp_path))


def test_a_live_source_that_stops_delivering_is_reopened_and_capture_goes_on() -> None:
    class FlakyCamera:
        name, live = "camera", True

        def __init__(self) -> None:
            # Two frames, the stream drops (a read error, then nothing), two more frames.
            self.script: list[Any] = ["a", "b", OSError("stream reset"), None, "c", "d"]
            self.reopened = 0

        def read(self) -> tuple[np.ndarray, str] | None:
            if not self.script:
                capture.stop()  # the test is over
                return None
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return None if step is None else (solid(RED), step)

        def reopen(self) -> None:
            self.reopened += 1

        def close(self) -> None:
            pass

    camera = FlakyCamera()
    capture = Capture(camera, FrameQueue(1), reconnect_s=0.001)

    names = [f.name for f in capture.frames()]

    assert names == ["a", "b", "c", "d"]
    assert (capture.errors, capture.reconnects, camera.reopened) == (1, 2, 2)
