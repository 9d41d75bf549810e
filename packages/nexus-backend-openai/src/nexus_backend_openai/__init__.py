"""Nexus backend type `openai`."""
