"""`python -m demo --rollouts`: a good release and a bad one sent through staged rollouts, as CI sends them.

Once every demo device runs the classifier, this publishes two new versions of
it with ``edgefleet publish --rollout demo-staged`` (what a CI job runs,
docs/ci.md) and follows each rollout over the REST API, printing each stage
as it moves and, once judged, every gate's measured value, threshold and
verdict:

* 1.1.0, the classifier re-exported (``zoo.faults.good``): canary, then 10 %,
  then everyone, each stage soaked and judged;
* 1.2.0, the classifier with its confidence collapsed (``zoo.faults.unsure``):
  halted at the canary by the confidence gate, the canary sent back to 1.1.0,
  which it still has on disk; no other device is sent 1.2.0.

It measures what ``docs/benchmarks.md`` records (from the rollout's start to
every device active on the good release, and from the failing verdict to the
canary running its previous version again) and writes the figures to
``logs/rollouts.json``.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from demo import scene
from zoo import faults

TEMPLATE = "demo-staged"
PLAN = {
    "stages": [
        {"kind": "count", "value": 1},
        {"kind": "percent", "value": 10},
        {"kind": "percent", "value": 100},
    ]
}
# A demo's minutes, not a production soak. Twelve agents, a broker, a web server and a worker share two
# cores, so a 1 ms model's p95 over half a minute swings by multiples from one soak to the next (2.6 times
# its own baseline in one run of the good release): latency is judged here by each site's budget, an
# absolute figure, and the relative regression gate is opened to its bound.
GATES = {"soak_s": 30, "max_soak_extensions": 1, "activation_timeout_s": 300, "max_p95_latency_regression": 10.0}
SITE_BUDGET_MS = 50
GOOD, BAD = "1.1.0", "1.2.0"
FINAL = ("completed", "halted", "reverted", "aborted")
POLL_S = 1.0


@dataclass
class Rehearsal:
    server: str
    token: str
    bin_dir: Path
    work: Path  # where the demo published its model: the measured metadata and the reference images
    say: Callable[[str], None]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return scene.api(self.server, self.token, method, path, body)

    def run(self, versions_running: str, timeout: float = 1800) -> dict[str, Any]:
        self.wait_for_fleet(versions_running, timeout)
        self.set_latency_budgets()
        self.ensure_template()
        figures: dict[str, Any] = {}
        good = self.publish(GOOD, faults.good(GOOD), same_answers=True)
        answer = self.follow(good, timeout)
        figures["good"] = {"rollout": good, "state": answer["state"], **time_to_all_active(answer)}
        if "all_active_s" in figures["good"]:
            seconds = figures["good"]["all_active_s"]
            self.say(f"  -> {GOOD}: {answer['state']}; every device active on it {seconds:.0f} s after the start")
        bad = self.publish(BAD, faults.unsure(release=BAD), same_answers=False)
        answer = self.follow(bad, timeout)
        figures["bad"] = {"rollout": bad, "state": answer["state"], "halt_reason": answer.get("halt_reason")}
        if answer["state"] == "reverted":
            previous, seconds = self.canary_back(answer, timeout)
            figures["bad"]["canary_back_s"] = seconds
            self.say(
                f"  -> {BAD}: reverted at the canary; the canary ran {previous} again "
                f"{seconds:.1f} s after the failing verdict"
            )
        self.say("")
        self.say("  the same from a terminal or a CI job:")
        self.say(
            f"    edgefleet publish --server {self.server} --token $EDGEFLEET_TOKEN --model {scene.MODEL} "
            f"--file model.onnx --metadata model.json --rollout {TEMPLATE}"
        )
        self.say(f"    edgefleet rollout status {bad} --server {self.server} --token $EDGEFLEET_TOKEN --wait")
        self.say(
            f"    edgefleet rollback site plant-north --reason 'operator check' --server {self.server} "
            "--token $EDGEFLEET_TOKEN"
        )
        return figures

    def wait_for_fleet(self, version: str, timeout: float) -> None:
        """Until every device runs ``version`` and has sent a few windows: the baseline the gates compare with."""
        self.say(f"waiting for every device to run {scene.MODEL} {version} before the rollouts ...")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.api("GET", "/api/v1/devices/?limit=1000")["results"]
            running = [r for r in rows if (r.get("reported") or {}).get("model_version") == version]
            if rows and len(running) == len(rows):
                break
            time.sleep(2)
        else:
            raise SystemExit(f"the devices did not all run {version} within {timeout:.0f} s")
        # Four telemetry windows each, rolled up: the stretch before each stage's gates compare with.
        time.sleep(4 * scene.WINDOW_S)

    def set_latency_budgets(self) -> None:
        """Each site's p95 inference budget, as an operator sets it: the absolute latency gate of every stage."""
        for site in self.api("GET", "/api/v1/sites/?limit=1000")["results"]:
            if site.get("latency_budget_ms") is None:
                self.api("PATCH", f"/api/v1/sites/{site['slug']}/", {"latency_budget_ms": SITE_BUDGET_MS})
        self.say(f"every site's p95 latency budget: {SITE_BUDGET_MS} ms (a stage may use 80 % of it)")

    def ensure_template(self) -> None:
        existing = self.api("GET", "/api/v1/rollout-templates/?limit=1000")
        if any(t.get("name") == TEMPLATE for t in existing.get("results", [])):
            return
        self.api(
            "POST",
            "/api/v1/rollout-templates/",
            {
                "name": TEMPLATE,
                "description": "The demo's staged plan: one canary, 10 %, everyone; short soaks.",
                "plan": PLAN,
                "gate_defaults": GATES,
            },
        )
        self.say(f"created the rollout template {TEMPLATE}: canary -> 10 % -> everyone, each stage soaked and judged")

    def offer(self) -> None:
        """Publish the good release without a rollout, with the staged template ready: a person starts it.

        ``make demo`` does this, so a newcomer starts a rollout from the dashboard's Models page and watches
        its stages on the Rollouts page.
        """
        self.ensure_template()
        self.say("")
        self.say(f"publishing {scene.MODEL} {GOOD}, a release that waits for someone to roll it out ...")
        scene.publish(self.bin_dir, self.server, self.token, scene.MODEL, *self.release(GOOD, faults.good(GOOD)))

    def publish(self, version: str, model: bytes, *, same_answers: bool) -> int:
        """``edgefleet publish ... --rollout demo-staged``, as CI runs it; returns the rollout's id."""
        self.say("")
        self.say(f"publishing {scene.MODEL} {version} with a rollout (edgefleet publish --rollout {TEMPLATE}) ...")
        files = self.release(version, model, same_answers=same_answers)
        answer = scene.publish(self.bin_dir, self.server, self.token, scene.MODEL, *files, "--rollout", TEMPLATE)
        started: dict[str, Any] = answer["rollout"]
        self.say(f"  rollout {started['id']} of {version} started: {self.server}/rollouts/{started['id']}/")
        return int(started["id"])

    def release(self, version: str, model: bytes, *, same_answers: bool = True) -> tuple[Path, Path, list[Path]]:
        """The model file, metadata and reference images of a release, written as a CI job has them.

        A release with the same answers as the demo's model keeps the reference distribution CI measured
        for it (the drift gate's baseline); another is published without one, as a CI job that does not
        measure one would.
        """
        folder = self.work / "releases"
        folder.mkdir(parents=True, exist_ok=True)
        model_file = folder / f"{scene.MODEL}-{version}.onnx"
        model_file.write_bytes(model)
        metadata = json.loads((self.work / f"{scene.MODEL}.json").read_text())
        metadata["version"] = version
        if not same_answers:
            metadata.pop("reference_distribution", None)
        metadata_file = folder / f"{scene.MODEL}-{version}.json"
        metadata_file.write_text(json.dumps(metadata, indent=1))
        return model_file, metadata_file, sorted((self.work / "reference").glob("*.png"))

    def follow(self, rollout_id: int, timeout: float) -> dict[str, Any]:
        """Poll the rollout until it ends, printing each stage's moves and, once judged, its gates."""
        deadline = time.monotonic() + timeout
        seen: dict[int, str] = {}
        judged: set[tuple[int, str]] = set()
        while True:
            answer: dict[str, Any] = self.api("GET", f"/api/v1/rollouts/{rollout_id}/")
            stages = answer.get("stages") or []
            for stage in stages:
                index, state = stage["index"], stage["state"]
                if seen.get(index) != state and state != "pending":
                    seen[index] = state
                    devices = f"{stage['devices']} device{'s' if stage['devices'] != 1 else ''}"
                    self.say(f"  stage {index + 1}/{len(stages)} ({devices}): {state}")
                latest = stage.get("gate_results") or []
                stamp = max((g["evaluated_at"] for g in latest), default="")
                if stamp and (index, stamp) not in judged:
                    judged.add((index, stamp))
                    for gate in (g for g in latest if g["evaluated_at"] == stamp):
                        self.say(f"      {describe(gate)}")
            if answer["state"] in FINAL:
                if answer.get("halt_reason"):
                    self.say(f"  {answer['state']}: {answer['halt_reason']}")
                return answer
            if time.monotonic() >= deadline:
                raise SystemExit(f"rollout {rollout_id} did not end within {timeout:.0f} s")
            time.sleep(POLL_S)

    def canary_back(self, answer: dict[str, Any], timeout: float) -> tuple[str, float]:
        """The version the canary ran before, and seconds from the failing verdict to it reporting it again."""
        failed = next(s for s in answer["stages"] if s["state"] == "failed")
        page = self.api("GET", f"/api/v1/rollouts/{answer['id']}/devices/?stage={failed['index']}&limit=1")
        entry = page["results"][0]
        canary, version = entry["device_id"], entry["from_version"]
        verdict_at = parse(failed["finished_at"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reported = self.api("GET", f"/api/v1/devices/{canary}/").get("reported") or {}
            if reported.get("model_version") == version and reported.get("phase") in ("active", "rolled_back"):
                return version, self.swapped_back(canary, verdict_at) - verdict_at.timestamp()
            time.sleep(0.5)
        raise SystemExit(f"the canary {canary} did not return to {version} within {timeout:.0f} s")

    def swapped_back(self, device_id: str, after: datetime) -> float:
        """When the device says it swapped models after ``after`` (its ``model_swap`` event), as a timestamp.

        The event is stamped on the device as it swaps; it reaches the control plane with the next
        telemetry flush, so it is waited for. Without it, now: when the swap was seen over the API.
        """
        since = urllib.parse.quote(after.isoformat())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = self.api("GET", f"/api/v1/devices/{device_id}/events/?kind=model_swap&since={since}")
            stamps = [parse(event["at"]) for event in events.get("results", [])]
            if stamps:
                return min(stamps).timestamp()
            time.sleep(1)
        return time.time()


def describe(gate: dict[str, Any]) -> str:
    value, threshold = gate.get("value"), gate.get("threshold")
    shown = "too little data yet" if value is None or gate["verdict"] == "pending" else f"{value:.4g}"
    limit = "" if threshold is None else f" (threshold {threshold:.4g})"
    return f"{gate['gate']:<28} {shown}{limit}: {gate['verdict']}"


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def time_to_all_active(answer: dict[str, Any]) -> dict[str, float]:
    """From the rollout's start (its first tick) to its last stage's devices all active, and to completion."""
    started = parse(answer["started_at"])
    last = answer["stages"][-1]
    figures = {}
    if last.get("all_active_at"):
        figures["all_active_s"] = (parse(last["all_active_at"]) - started).total_seconds()
    if answer.get("finished_at"):
        figures["completed_s"] = (parse(answer["finished_at"]) - started).total_seconds()
    return figures
