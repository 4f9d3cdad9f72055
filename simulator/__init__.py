"""edgefleet-sim: simulated devices that speak the real protocol, and what-if runs of rollout plans.

Layers, lowest first (docs/simulator.md, "Layers"):

* ``simulator.scenario``, ``simulator.behaviour``, ``simulator.device``: pure.
  Scenario files, what each device measures, and one device's protocol state
  machine with no I/O and no clock of its own. They import only the device
  kernel (``agent.kernel``) and numpy, so the control plane's what-if endpoint
  (``rollouts.whatif``) uses them as they are.
* ``simulator.live``: thousands of those devices in one asyncio loop, over MQTT
  to a real broker, enrolled over the real REST API.
* ``simulator.cli``: the ``edgefleet-sim`` command.
"""
