"""The device kernel: what the agent and the control plane must agree on byte for byte.

The wire protocol, the bundle manifest, signature and bundle verification,
the input spec, pre-processing and decoding, the mergeable histograms, and
the one log line format.
No Django, no threads, no MQTT: the control plane imports these modules so
that what it signs, validates and computes matches what a device does.
"""
