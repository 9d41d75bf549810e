"""Nexus core: the LLM gateway as a library."""

from nexus_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
