"""The one-machine demo: embedded broker, control plane, worker and real agents (python -m demo)."""
