"""Tests against real inference servers built from source (see scripts/build-llama-server.sh)."""
