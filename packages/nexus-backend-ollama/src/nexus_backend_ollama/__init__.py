"""Nexus backend type `ollama`."""
