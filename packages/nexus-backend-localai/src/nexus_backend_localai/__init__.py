"""Nexus backend type `localai`."""
