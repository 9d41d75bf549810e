"""Where durable state lives: the store ``[state]`` names (``open_store``), which SQLite file is
this instance's (``sqlite_path``, and taking over the file earlier versions shared), and saying
so (``describe_state``, ``store_location``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

from nexus_core.config.fields import StateBackend
from nexus_core.config.schema import DEFAULT_PORT, LEGACY_SQLITE_PATH, StateConfig
from nexus_core.state.base import StateError, StateStore
from nexus_core.state.memory import MemoryStore
from nexus_core.state.redis import RedisStore
from nexus_core.state.sqlite import SqliteStore

log = logging.getLogger("nexus.state")

#: The SQLite file every instance on a machine shared before each got its own (``sqlite_path``).
LEGACY_FILE_NAME = Path(LEGACY_SQLITE_PATH).name
#: Beside the legacy file: the instance that kept it (``instance_label``).
OWNER_SUFFIX = ".owner"


def open_store(
    config: StateConfig,
    environ: Mapping[str, str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
) -> StateStore:
    """The store ``[state]`` describes, constructed but not opened.

    ``config_file`` and ``port`` say which instance this is (``sqlite_path``); with the default
    SQLite file this may take over the file of earlier versions (``claim_legacy``).
    """
    if config.backend is StateBackend.MEMORY:
        return MemoryStore()
    env = environ if environ is not None else os.environ
    if config.backend is StateBackend.SQLITE:
        return SqliteStore(sqlite_path(config, env, config_file=config_file, port=port, claim=True))
    name = config.redis_url_env
    url = env.get(name) if name else None
    if not url:
        raise StateError(
            f"[state] backend is 'redis' but the environment variable {name or '(unset)'} "
            "holding the Redis URL is not set"
        )
    return RedisStore(url, key_prefix=config.key_prefix)


# -- which SQLite file --------------------------------------------------------------------------
#
# Left unset, ``state.path`` means a file of this instance's own: two ``nexus serve`` on one
# machine must not share spend, keys or run-time backends, while a restart of the same instance
# (and every worker of ``--workers N``) must find its file again. What tells instances apart is
# the configuration file (its absolute path, so the same file from any directory is the same
# instance, and symlinks are not followed: a deployment that swaps the link target stays one
# instance); without a file, the port. Earlier versions shared ``state.sqlite3``: the first
# instance to start without ``state.path`` takes it over (its name goes into ``*.owner``), so
# an upgraded single instance keeps its spend and backends; every other instance starts afresh.


def is_default_path(config: StateConfig) -> bool:
    """Whether ``state.path`` is unset (or the old default, which now means the same)."""
    return config.path is None or config.path == LEGACY_SQLITE_PATH


def state_directory(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/nexus``, else ``~/.local/state/nexus``."""
    xdg = environ.get("XDG_STATE_HOME")
    return Path(xdg) / "nexus" if xdg else Path("~/.local/state/nexus").expanduser()


def instance_label(config_file: str | os.PathLike[str] | None, port: int) -> str:
    """How this instance is told from others on the machine, as people read it."""
    if config_file is not None:
        return f"configuration file {os.path.abspath(config_file)}"
    return f"no configuration file, port {port}"


def instance_file_name(config_file: str | os.PathLike[str] | None, port: int) -> str:
    """This instance's own file: ``<stem>-<digest of the path>.sqlite3``, else ``port-<n>``."""
    if config_file is None:
        return f"port-{port}.sqlite3"
    absolute = os.path.abspath(config_file)
    digest = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(absolute).stem).strip("-.")[:40] or "config"
    return f"{stem}-{digest}.sqlite3"


def legacy_owner(legacy: Path) -> str | None:
    """Who kept the legacy file (``instance_label``); None: nobody yet, "": unreadable."""
    try:
        return (legacy.parent / (legacy.name + OWNER_SUFFIX)).read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def claim_legacy(legacy: Path, label: str) -> bool:
    """Name this instance the owner of the legacy file unless another one is; True: it is ours.

    The owner file appears whole or not at all (written aside, then hard-linked, which fails
    if it exists), so two instances starting together cannot both take it, and the workers
    of one instance agree.
    """
    owner = legacy.parent / (legacy.name + OWNER_SUFFIX)
    scratch = legacy.parent / f".{owner.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        scratch.write_text(label + "\n", "utf-8")
        try:
            os.link(scratch, owner)
        except FileExistsError:
            return legacy_owner(legacy) == label
        finally:
            scratch.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not take over the state file %s: %s", legacy, exc)
        return False
    log.warning(
        "this instance (%s) takes over %s, the state file earlier versions shared: its spend, "
        "keys and backends added at run time stay with it; other instances get a file of "
        "their own (%s names the owner)",
        label,
        legacy,
        owner.name,
    )
    return True


def sqlite_path(
    config: StateConfig,
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    claim: bool = False,
) -> str:
    """The SQLite file: ``state.path`` when set, else this instance's own file.

    The legacy file is this instance's when it owns it, or when nobody does and this instance
    has no file of its own yet (``claim``: take it now; without, only say which file it would
    be, as ``nexus config check`` does).
    """
    if config.path is not None and not is_default_path(config):
        return config.path
    directory = state_directory(environ)
    own = directory / instance_file_name(config_file, port)
    legacy = directory / LEGACY_FILE_NAME
    label = instance_label(config_file, port)
    owner = legacy_owner(legacy)
    if owner == label:
        return str(legacy)
    unclaimed = owner is None and legacy.is_file() and not own.exists()
    if unclaimed and (not claim or claim_legacy(legacy, label)):
        return str(legacy)
    return str(own)


def store_location(store: StateStore) -> str:
    """Where an opened store keeps its data, for the log line at start."""
    if store.kind == "memory":
        return "in memory (lost on restart)"
    if isinstance(store, SqliteStore):
        return f"in the SQLite file {store.path}"
    if isinstance(store, RedisStore):  # never its URL: it may hold a password
        return f"in Redis (keys prefixed {store.key_prefix!r})"
    return f"in the {store.kind} store"


def describe_state(
    config: StateConfig,
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
) -> str:
    """One line saying where durable state is kept (``nexus config check``, the start log)."""
    if config.backend is StateBackend.MEMORY:
        return "in memory (lost on restart)"
    if config.backend is StateBackend.REDIS:
        return f"in Redis (${config.redis_url_env}), keys prefixed {config.key_prefix!r}"
    path = sqlite_path(config, environ, config_file=config_file, port=port)
    if not is_default_path(config):
        return f"in the SQLite file {path} (state.path)"
    label = instance_label(config_file, port)
    if Path(path).name != LEGACY_FILE_NAME:
        return f"in the SQLite file {path}, this instance's own ({label})"
    legacy = Path(path)
    if legacy_owner(legacy) == label:
        return f"in the SQLite file {path}, kept from earlier versions by this instance ({label})"
    return (
        f"in the SQLite file {path}, shared by earlier versions: this instance ({label}) takes "
        "it over when it starts, unless another one does first"
    )
