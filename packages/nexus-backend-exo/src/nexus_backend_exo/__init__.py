"""Nexus backend type `exo`."""
