"""Nexus backend type `vllm`."""
