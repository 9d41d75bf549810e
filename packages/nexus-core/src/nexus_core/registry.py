"""The registry: the one place backend state lives, with a model index kept current on change."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nexus_core.adapters import (
    CAPABILITIES,
    BackendAdapter,
    BackendStatus,
    LoadSignal,
    ModelInfo,
    ModelState,
)
from nexus_core.config import BackendConfig, Zone

log = logging.getLogger("nexus.registry")

LATENCY_SMOOTHING = 0.2
#: The ``source`` of backends found over mDNS (``nexus_core.discovery``): they give way to a
#: backend at the same address that exists by other means.
DISCOVERED = "mdns"


def is_this_machine(host: str) -> bool:
    """True for ``localhost``, loopback addresses and the addresses of this machine."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    # Only an address of one of our interfaces can be bound to; nothing is sent.
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def server_address(url: str) -> tuple[str, int, str]:
    """What makes two backend URLs one server: host, port and base path.

    Every address of this machine counts as ``localhost``; the default port of the scheme is
    written out; a trailing ``/`` or ``/v1`` does not count.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if is_this_machine(host):
        host = "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port, parts.path.rstrip("/").removesuffix("/v1")


@dataclass(eq=False, slots=True)
class Backend:
    """A backend and everything known about it right now."""

    name: str
    config: BackendConfig
    adapter: BackendAdapter
    zone: Zone
    is_cloud: bool
    source: str = "static"
    status: BackendStatus = BackendStatus.UNKNOWN
    models: dict[str, ModelInfo] = field(default_factory=dict)
    _pending: int = field(default=0, init=False, repr=False)
    _latency_ms: float | None = field(default=None, init=False, repr=False)
    last_error: str | None = None
    last_checked: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    load: LoadSignal | None = None
    version: str | None = None
    requests_total: int = 0
    errors_total: int = 0
    seq: int = 0
    # Copied from config once: the router reads them per request.
    priority: int = 50
    tier: int = 1
    max_concurrent: int | None = None
    _load_busy: float = field(default=0.0, init=False, repr=False)
    #: The smart strategy's weights (priority, load, latency), set by the router; None: unranked.
    weights: tuple[float, float, float] | None = field(default=None, repr=False)
    #: Minus the smart score, kept current whenever an input changes, so ordering candidates is
    #: a sort on one attribute instead of a score computation per candidate and request.
    rank: float = field(default=0.0, repr=False)
    #: Requests in flight through Nexus per model (what a per-model drain waits for).
    in_flight: dict[str, int] = field(default_factory=dict, repr=False)
    #: Each model's lifecycle state, as the fleet inventory last read it (``nexus_core.fleet``);
    #: empty for backends without lifecycle operations.
    model_states: dict[str, ModelState] = field(default_factory=dict, repr=False)
    #: Whether the server loads an unloaded model for a request (None: unknown).
    autoload: bool | None = None
    #: Models no new request goes to here, and why (``loading``, ``draining``, ``unloaded``):
    #: worked out by ``Registry.set_fleet_state`` and ``drain_model``, never per request.
    held: dict[str, str] = field(default_factory=dict, repr=False)
    #: Models drained by an operation (``Registry.drain_model``).
    drained_models: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.priority = self.config.priority
        self.tier = self.config.tier
        self.max_concurrent = self.config.max_concurrent
        self.rerank()

    @property
    def pending(self) -> int:
        """Requests in flight to this backend through Nexus."""
        return self._pending

    @pending.setter
    def pending(self, value: int) -> None:
        self._pending = value
        if self.weights is not None:
            self.rerank()

    @property
    def latency_ms(self) -> float | None:
        """Moving average of answer latency (None until measured)."""
        return self._latency_ms

    @latency_ms.setter
    def latency_ms(self, value: float | None) -> None:
        self._latency_ms = value
        if self.weights is not None:
            self.rerank()

    @property
    def load_busy(self) -> float:
        """How busy the server says it is, 0..1, from ``load`` (0 when it says nothing)."""
        return self._load_busy

    @load_busy.setter
    def load_busy(self, value: float) -> None:
        self._load_busy = value
        if self.weights is not None:
            self.rerank()

    def rerank(self) -> None:
        """Recompute ``rank`` from priority, load and latency (call after changing priority)."""
        weights = self.weights
        if weights is None:
            return
        w_priority, w_load, w_latency = weights
        limit = self.max_concurrent
        pending = self._pending
        busy = pending / limit if limit else pending / 10
        if self._load_busy > busy:
            busy = self._load_busy
        latency = self._latency_ms
        priority = self.priority
        self.rank = -(
            w_priority * (100.0 - (priority if priority < 100 else 100))
            + w_load * (100.0 - 100.0 * (busy if busy < 1.0 else 1.0))
            + w_latency
            * (50.0 if latency is None else 100.0 - (latency / 10.0 if latency < 1000.0 else 100.0))
        )

    @property
    def type_name(self) -> str:
        """The backend type (``ollama``, ``vllm``, ...)."""
        return self.config.type

    @property
    def kind(self) -> str:
        """``cloud`` or ``local``, as the X-Nexus-Backend-Type header says."""
        return "cloud" if self.is_cloud else "local"

    def set_load(self, signal: LoadSignal | None) -> None:
        """Record what the server reports about its load, and the 0..1 busy figure from it."""
        self.load = signal
        self.load_busy = busy_fraction(signal)

    def observe_latency(self, milliseconds: float) -> None:
        """Fold one latency sample into the moving average."""
        current = self.latency_ms
        self.latency_ms = (
            milliseconds
            if current is None
            else current + LATENCY_SMOOTHING * (milliseconds - current)
        )

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for APIs and the CLI."""
        return {
            "name": self.name,
            "url": self.config.url,
            "type": self.type_name,
            "kind": self.kind,
            "source": self.source,
            "status": self.status.value,
            "zone": self.zone.value,
            "tier": self.tier,
            "priority": self.priority,
            "max_concurrent": self.max_concurrent,
            "pending": self.pending,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "last_error": self.last_error,
            "last_checked": self.last_checked,
            "version": self.version,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "models": [
                {
                    "id": m.id,
                    "context_length": m.context_length,
                    **{name: getattr(m, name) for name in CAPABILITIES},
                }
                for m in self.models.values()
            ],
        }


def busy_fraction(signal: LoadSignal | None) -> float:
    """0..1: the larger of slot use, queue pressure and KV-cache use that a server reports."""
    if signal is None:
        return 0.0
    busy = 0.0
    total = signal.total_slots
    if total:
        busy = ((signal.busy_slots or 0) + (signal.queue_depth or 0)) / total
    elif signal.queue_depth:
        busy = signal.queue_depth / 10
    if signal.kv_cache_usage is not None:
        busy = max(busy, signal.kv_cache_usage)
    return min(1.0, max(0.0, busy))


class Registry:
    """Backends by name, and by model id (any status) for cheap routing lookups."""

    #: The smart strategy's weights, given to every backend added (set by the router).
    weights: tuple[float, float, float] | None = None

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._by_model: dict[str, tuple[Backend, ...]] = {}
        self._listeners: list[Callable[[str, Backend], None]] = []
        #: Models some backend holds back from routing (``Backend.held``): the router looks
        #: further only for these.
        self.held_models: frozenset[str] = frozenset()
        self._next_seq = 0
        self.started_at = time.time()

    def __len__(self) -> int:
        return len(self._backends)

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def get(self, name: str) -> Backend | None:
        """The backend called ``name``, if any."""
        return self._backends.get(name)

    def at_address(self, url: str, *, discovered: bool = True) -> Backend | None:
        """A backend at the same server as ``url`` (``server_address``), if any.

        ``discovered=False`` leaves out backends found over mDNS, which give way to others.
        """
        wanted = server_address(url)
        for backend in self._backends.values():
            if not discovered and backend.source == DISCOVERED:
                continue
            if server_address(backend.config.url) == wanted:
                return backend
        return None

    def add(self, backend: Backend) -> None:
        """Add a backend; its name must be new."""
        if backend.name in self._backends:
            raise ValueError(f"a backend named {backend.name!r} exists already")
        self._next_seq += 1
        backend.seq = self._next_seq
        if self.weights is not None:
            backend.weights = self.weights
            backend.rerank()
        self._backends[backend.name] = backend
        self._index(backend, backend.models)
        self._notify("added", backend)

    def remove(self, name: str) -> Backend | None:
        """Remove and return the backend called ``name``."""
        backend = self._backends.pop(name, None)
        if backend is not None:
            self._unindex(backend)
            if backend.held:
                self._collect_held()
            self._notify("removed", backend)
        return backend

    def set_models(self, backend: Backend, models: Iterable[ModelInfo]) -> None:
        """Replace a backend's model list (plus what its config declares); re-index on change."""
        new = {model.id: model for model in models}
        states = backend.model_states
        if states:
            # The fleet inventory knows better than a listing whether a model is in memory.
            loaded = ModelState.LOADED
            for model_id, model in new.items():
                state = states.get(model_id)
                if state is not None and model.loaded is not (state is loaded):
                    new[model_id] = dataclasses.replace(model, loaded=state is loaded)
        for declared in backend.config.models:
            base = new.get(declared.id) or ModelInfo(declared.id)
            overrides = {
                key: value
                for key in ("context_length", *CAPABILITIES)
                if (value := getattr(declared, key)) is not None
            }
            new[declared.id] = dataclasses.replace(base, **overrides) if overrides else base
        if new == backend.models:
            return
        self._unindex(backend)
        backend.models = new
        if backend.name in self._backends:
            self._index(backend, new)
        self._notify("models", backend)

    def set_fleet_state(
        self, backend: Backend, states: dict[str, ModelState], autoload: bool | None
    ) -> None:
        """Record each model's lifecycle state on ``backend`` (the fleet inventory's reading):
        ``loaded`` follows it, and models that are loading, or unloaded where the server does
        not load on demand, are held back from routing."""
        changed = states != backend.model_states or autoload != backend.autoload
        backend.model_states = dict(states)
        backend.autoload = autoload
        if changed:
            self.set_models(backend, list(backend.models.values()))
        self._rehold(backend)

    def set_model_state(self, backend: Backend, model: str, state: ModelState) -> None:
        """One model's state changed (a load or unload finished, a request loaded it)."""
        if not backend.model_states and state is ModelState.LOADED:
            return  # no inventory for this backend: nothing to correct
        self.set_fleet_state(backend, {**backend.model_states, model: state}, backend.autoload)

    def drain_model(self, backend: Backend, model: str) -> None:
        """No new request for ``model`` goes to ``backend``; others, and those in flight, go on."""
        backend.drained_models.add(model)
        self._rehold(backend)

    def resume_model(self, backend: Backend, model: str) -> None:
        """Undo ``drain_model``."""
        backend.drained_models.discard(model)
        self._rehold(backend)

    def _rehold(self, backend: Backend) -> None:
        held: dict[str, str] = {}
        no_autoload = backend.autoload is False
        for model, state in backend.model_states.items():
            if state in (ModelState.LOADING, ModelState.DOWNLOADING) or (
                no_autoload and state in (ModelState.UNLOADED, ModelState.SLEEPING)
            ):
                held[model] = state.value
        for model in backend.drained_models:
            held[model] = "draining"
        if held == backend.held:
            return
        backend.held = held
        self._collect_held()
        self._notify("models", backend)

    def _collect_held(self) -> None:
        self.held_models = frozenset(
            model for backend in self._backends.values() for model in backend.held
        )

    def serving(self, model: str) -> tuple[Backend, ...]:
        """Backends (any status) that list ``model``, in registration order."""
        return self._by_model.get(model, ())

    def model_ids(self) -> list[str]:
        """Every model id any backend lists."""
        return list(self._by_model)

    def set_status(
        self, backend: Backend, status: BackendStatus, reason: str | None = None
    ) -> None:
        """Change status, logging the transition once."""
        if backend.status is status:
            return
        old = backend.status
        backend.status = status
        level = logging.INFO if status is BackendStatus.HEALTHY else logging.WARNING
        log.log(
            level,
            "backend %s: %s -> %s%s",
            backend.name,
            old.value,
            status.value,
            f" ({reason})" if reason else "",
        )
        self._notify("status", backend)

    def subscribe(self, listener: Callable[[str, Backend], None]) -> None:
        """Call ``listener(event, backend)`` on add/remove/status/models changes."""
        self._listeners.append(listener)

    def _index(self, backend: Backend, models: Iterable[str]) -> None:
        for model in models:
            current = [*self._by_model.get(model, ()), backend]
            current.sort(key=lambda b: b.seq)
            self._by_model[model] = tuple(current)

    def _unindex(self, backend: Backend) -> None:
        for model in backend.models:
            remaining = tuple(b for b in self._by_model.get(model, ()) if b is not backend)
            if remaining:
                self._by_model[model] = remaining
            else:
                self._by_model.pop(model, None)

    def _notify(self, event: str, backend: Backend) -> None:
        for listener in self._listeners:
            try:
                listener(event, backend)
            except Exception:
                log.exception("registry listener failed")
