"""Nexus backend type `lmstudio`."""
