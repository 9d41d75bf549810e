"""Durable state: budget spend, rate-limit buckets and run-time records behind one small interface.

The modules, one job each:

- ``base``: the ``StateStore`` interface every store implements, ``StateError``, the outage log
  (``StoreOutage``) and the token-bucket arithmetic; the crash-safety contract of spend;
- ``memory``, ``sqlite``, ``redis``: one store each (a new store is a new module here, and a
  value of ``[state] backend`` in ``nexus_core.config``);
- ``location``: which store ``[state]`` names (``open_store``) and which SQLite file is this
  instance's.

Everything in ``__all__`` is public API (docs/embedding.md, docs/configuration.md's ``[state]``).
The other names re-exported here keep older import paths working; import them from their module.
"""

from nexus_core.state.base import StateError, StateStore, StoreOutage
from nexus_core.state.location import claim_legacy as claim_legacy
from nexus_core.state.location import describe_state as describe_state
from nexus_core.state.location import is_default_path as is_default_path
from nexus_core.state.location import open_store
from nexus_core.state.location import sqlite_path as sqlite_path
from nexus_core.state.location import store_location as store_location
from nexus_core.state.memory import MemoryStore
from nexus_core.state.redis import REDIS_TIMEOUT_SECONDS as REDIS_TIMEOUT_SECONDS
from nexus_core.state.redis import RedisStore
from nexus_core.state.sqlite import SqliteStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "StateError",
    "StateStore",
    "StoreOutage",
    "open_store",
]
