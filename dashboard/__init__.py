"""Operator pages that combine the apps: the fleet overview and one device."""
