"""The ``Gateway`` class: one object made of the parts in this package (see ``__init__``)."""

from __future__ import annotations

from nexus_core.gateway.lifecycle import Lifecycle
from nexus_core.gateway.proxy import Requests

__all__ = ["Gateway"]


class Gateway(Lifecycle, Requests):
    """One OpenAI-compatible entry point over many backends, usable in-process.

    ``async with Gateway(config) as gateway:`` starts health checks and discovery; the methods
    mirror the HTTP API (chat, completions, embeddings, models, backends).

    Its behaviour comes from one class per job, each in its own module: ``GatewayComponents``
    (``components``: the parts, built from the config), ``Catalogue`` (``catalogue``: models and
    health), ``BackendManagement`` (``backends``), ``Lifecycle`` (``lifecycle``: start and stop)
    and ``Requests`` (``proxy``: the request path). They are mixins of this one class, so a
    request reads the gateway's attributes directly, as before the split.
    """
