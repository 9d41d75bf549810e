"""The Gateway facade: everything the server does, as an async Python API with no server needed.

One class, ``Gateway`` (``facade``), made of one part per job:

- ``components``: what a gateway is built from (registry, router, health, accountant, clients,
  queue, monitor, tracing, keys, failover settings), wired once from the config;
- ``lifecycle``: ``start``/``stop`` (accounting, configured backends, sibling sync, discovery,
  plugins);
- ``backends``: adding (type detection), probing, reconfiguring, removing backends, and keeping
  the ones added at run time in the state store;
- ``catalogue``: the models listed (``/v1/models``, ``/api/tags``...) and the health summary;
- ``proxy``: the request path (``proxy``) and the in-process ``chat_completions``,
  ``completions`` and ``embeddings``.
"""

from nexus_core.failover import ProxyResult, ProxyStream
from nexus_core.gateway.backends import BACKENDS_COLLECTION, name_from_url
from nexus_core.gateway.facade import Gateway
from nexus_core.gateway.proxy import state_unavailable

#: The name ``nexus_server.admin`` imports (kept for it; ``name_from_url`` is the public one).
_name_from_url = name_from_url

__all__ = [
    "BACKENDS_COLLECTION",
    "Gateway",
    "ProxyResult",
    "ProxyStream",
    "name_from_url",
    "state_unavailable",
]
