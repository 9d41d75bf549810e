"""Nexus server: the HTTP API and the ``nexus`` command line."""

__version__ = "0.1.0"
