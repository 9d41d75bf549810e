"""Nexus backend type `llamacpp`."""
