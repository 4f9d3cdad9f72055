"""The edgefleet on-device agent (no Django)."""

__version__ = "0.1.0"
