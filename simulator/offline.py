"""A fleet of ``SimDevice`` run in simulated time, with no broker: what each device would publish.

``simulate()`` steps every device through the scenario's timeline, connects
and disconnects them as the faults say (a site offline, a device that dies),
hands each the messages given for it at their times (a signed ``desired``
document, an ``ack``) and records what each publishes. Pure and quick (a
thousand devices for an hour in seconds): the determinism test compares two
runs of it, and ``edgefleet-sim trace`` prints one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.kernel import protocol, verify
from simulator import behaviour
from simulator.behaviour import DeviceSpec
from simulator.device import Out, Publish, SimDevice, SiteLinks, Trace
from simulator.scenario import Scenario


@dataclass(frozen=True)
class Delivery:
    """A message the cloud sends a device at ``at`` seconds."""

    at: float
    device: int
    suffix: str
    payload: bytes


def device_id_for(spec: DeviceSpec) -> str:
    """The id a device has when no control plane gave it one (offline runs, what-if)."""
    return f"sim-{spec.name}"


def simulate(
    scenario: Scenario,
    *,
    until_s: float | None = None,
    keyring: verify.Keyring | None = None,
    deliveries: Sequence[Delivery] = (),
    origin: datetime | None = None,
    ack: bool = True,
    on_publish: Callable[[SimDevice, float, list[Out]], None] | None = None,
) -> tuple[list[SimDevice], Trace]:
    """Run every device to ``until_s`` (default: the scenario's duration); returns the devices and their trace.

    ``ack``: the cloud acknowledges each telemetry batch as it arrives, so
    outboxes hold only what an outage kept back.
    """
    until = scenario.duration_s if until_s is None else until_s
    specs = behaviour.fleet(scenario)
    links = SiteLinks(scenario)
    ring = keyring or verify.Keyring()
    devices = [
        SimDevice(
            scenario, spec, device_id=device_id_for(spec), keyring=ring, origin=origin or scenario.start, links=links
        )
        for spec in specs
    ]
    dies = behaviour.dead_at(scenario, specs)
    trace = Trace()
    # Events in time order; ties by kind (links first, then messages, then the device's own clock) and device.
    queue: list[tuple[float, int, int, int]] = []
    for device in devices:
        heapq.heappush(queue, (0.0, 0, device.spec.index, -1))
        heapq.heappush(queue, (device.next_due(), 2, device.spec.index, -1))
    for number, delivery in enumerate(deliveries):
        heapq.heappush(queue, (delivery.at, 1, delivery.device, number))
    for edge in _link_edges(scenario, specs, dies):
        heapq.heappush(queue, edge)
    scheduled = {device.spec.index: device.next_due() for device in devices}

    def record(device: SimDevice, t: float, out: list[Out]) -> None:
        trace.add(device.device_id, out)
        if on_publish is not None:
            on_publish(device, t, out)
        if ack:
            for item in out:
                if isinstance(item, Publish) and item.suffix == "telemetry":
                    message = protocol.decode("telemetry", item.payload, received_at=device.clock(t))
                    assert isinstance(message, protocol.Telemetry)
                    device.receive(t, "ack", protocol.encode(protocol.Ack(seq=message.records[-1].seq)))

    while queue:
        t, kind, index, number = heapq.heappop(queue)
        if t > until:
            break
        device = devices[index]
        if kind == 0:
            up = _link_up(scenario, device.spec, dies, t)
            if up and not device.connected:
                record(device, t, device.connect(t))
            elif not up and device.connected:
                device.disconnect()
        elif kind == 1:
            delivery = deliveries[number]
            record(device, t, device.due(t))
            if device.connected:
                record(device, t, device.receive(t, delivery.suffix, delivery.payload))
        elif scheduled.get(index) != t:
            continue  # superseded by an earlier wake-up
        else:
            record(device, t, device.due(t))
        following = device.next_due()
        if scheduled.get(index) != following:
            scheduled[index] = following
            heapq.heappush(queue, (following, 2, index, -1))
    return devices, trace


def _link_up(scenario: Scenario, spec: DeviceSpec, dies: dict[int, float], t: float) -> bool:
    return t < dies.get(spec.index, float("inf")) and not behaviour.offline(scenario, spec.site, t)


def _link_edges(
    scenario: Scenario, specs: Sequence[DeviceSpec], dies: dict[int, float]
) -> list[tuple[float, int, int, int]]:
    """The moments a device's link may change: a site going off or coming back, a device dying."""
    edges = [(at, 0, index, -1) for index, at in dies.items()]
    for fault in scenario.faults:
        if fault.kind != "site_offline":
            continue
        for spec in specs:
            if spec.site == fault.site:
                edges.append((fault.at_s, 0, spec.index, -1))
                if fault.for_s is not None:
                    edges.append((fault.at_s + fault.for_s, 0, spec.index, -1))
    return edges
