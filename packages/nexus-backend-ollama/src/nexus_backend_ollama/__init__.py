"""Nexus backend type ``ollama``: an Ollama server.

A probe reads ``/api/version`` (health, version), ``/api/tags`` (the models) and ``/api/ps`` (the
models in memory) at once. Capabilities and context length come from the tags when the server
puts them there (v0.33+), else from ``/api/show``, asked once per model version (its digest and
``modified_at``), a few at a time and within a time budget so a probe stays cheap. Chat and
completions go through Ollama's OpenAI-compatible ``/v1`` unchanged; embeddings through
``/api/embed``, translated from and back to the OpenAI shape (``embeddings.py``). A full request
queue (503 ``server busy``) is "overloaded", so the request fails over. See README.md.

Model lifecycle (``nexus_core.adapters.ModelLifecycle``), as Ollama's API docs describe it:
``/api/tags`` lists what it could serve, ``/api/ps`` what is in memory (``size``, ``size_vram``,
``context_length``, ``expires_at``); ``POST /api/generate {"model": m}`` loads a model and
answers once it is loaded, ``{"model": m, "keep_alive": 0}`` unloads it. A loaded model stays as
long as the server's keep-alive (``OLLAMA_KEEP_ALIVE``, 5 minutes by default) unless used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from nexus_backend_ollama import embeddings
from nexus_core import hookimpl
from nexus_core.adapter_kit import (
    ProbeAnswer,
    UpstreamErrors,
    bearer,
    deadline_in,
    poll_until,
    probe_get,
    read_error,
    time_left,
)
from nexus_core.adapters import (
    LIST_TIMEOUT_SECONDS,
    LOAD_TIMEOUT_SECONDS,
    UNLOAD_TIMEOUT_SECONDS,
    AvailableModel,
    BackendError,
    BackendStatus,
    Endpoint,
    ErrorKind,
    LifecycleError,
    LifecycleFailure,
    LifecycleSupport,
    ModelInfo,
    ModelInventory,
    ModelState,
    ProbeResult,
    Timeouts,
    UpstreamResponse,
    clip,
)
from nexus_core.config import BackendConfig
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter, api_base

__all__ = ["ERRORS", "LoadedModel", "OllamaAdapter", "ShownModel", "register_backends"]

#: What ``GET /`` answers on every Ollama.
BANNER = "Ollama is running"
#: ``/api/show`` requests one adapter runs at once.
SHOW_CONCURRENCY = 4
#: How long a probe waits for ``/api/show`` answers; slower ones land in the next probe.
SHOW_BUDGET_SECONDS = 2.0

#: What Ollama offers of the lifecycle, whatever its version.
SUPPORT = LifecycleSupport(
    available_models=True,
    load=True,
    unload=True,
    autoload=True,
    detail=(
        "Ollama: /api/tags and /api/ps; load and unload through /api/generate "
        "(keep_alive 0 unloads); a loaded model stays for the server's keep-alive "
        "(OLLAMA_KEEP_ALIVE, 5 minutes by default) after its last use"
    ),
)

#: Errors of Ollama's ``/v1``, passed on as they are but for the busy 503.
ERRORS = UpstreamErrors("Ollama", quirks=(embeddings.SERVER_BUSY,))

ModelVersion = tuple[str | None, str | None]  # (digest, modified_at) of one model in /api/tags


@dataclass(frozen=True, slots=True)
class ShownModel:
    """What ``/api/show`` said about one version of a model (None: it did not say)."""

    version: ModelVersion
    capabilities: frozenset[str] | None
    context_length: int | None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model in memory, as ``/api/ps`` lists it."""

    name: str
    #: The context the model runs with now (``num_ctx``), not the one it was trained for.
    context_length: int | None
    expires_at: str | None


class OllamaAdapter(OpenAIWireAdapter):
    """Ollama: health, models and capabilities from its native API, requests through ``/v1``."""

    type_name: ClassVar[str] = "ollama"
    is_cloud: ClassVar[bool] = False
    errors: ClassVar[UpstreamErrors] = ERRORS

    def __init__(self, config: BackendConfig, clients: HttpClients) -> None:
        super().__init__(config, clients)
        self.root = self.api_base.removesuffix("/v1")
        self._embed_url = self.root + "/api/embed"
        self.show_budget_seconds = SHOW_BUDGET_SECONDS
        self._show_slots = asyncio.Semaphore(SHOW_CONCURRENCY)
        self._shown: dict[str, ShownModel] = {}
        self._showing: dict[str, asyncio.Task[None]] = {}
        self._loaded: dict[str, LoadedModel] | None = None

    # -- requests --------------------------------------------------------------------------------

    async def send(
        self, endpoint: Endpoint, body: bytes, *, stream: bool, timeouts: Timeouts
    ) -> UpstreamResponse:
        """Chat and completions through ``/v1``; embeddings through ``/api/embed``."""
        if endpoint is Endpoint.EMBEDDINGS:
            return await self._embed(body, timeouts)
        try:
            return await self.clients.transport.post(
                self._urls[endpoint], body, self._headers, stream=stream, timeouts=timeouts
            )
        except BackendError as exc:
            raise self.upstream_error(exc) from None

    async def _embed(self, body: bytes, timeouts: Timeouts) -> UpstreamResponse:
        request = embeddings.to_native(body)
        try:
            upstream = await self.clients.transport.post(
                self._embed_url, request.body, self._headers, stream=False, timeouts=timeouts
            )
        except BackendError as exc:
            raise embeddings.NATIVE_ERRORS.normalise(exc) from None
        return UpstreamResponse(
            status=upstream.status,
            content_type="application/json",
            body=embeddings.from_native(upstream.body or b"", request),
        )

    # -- probing ---------------------------------------------------------------------------------

    @property
    def loaded_models(self) -> Mapping[str, LoadedModel] | None:
        """Models in memory at the last probe, by name; None when ``/api/ps`` did not answer."""
        return self._loaded

    async def probe(self) -> ProbeResult:
        """Healthy when ``/api/version`` and ``/api/tags`` answer; models with what is known."""
        version_answer, tags_answer, ps_answer = await asyncio.gather(
            self.probe_get(self.root + "/api/version"),
            self.probe_get(self.root + "/api/tags"),
            self.probe_get(self.root + "/api/ps"),
        )
        if version_answer.failure is not None:
            return version_answer.unreachable()
        version: str | None = None
        if version_answer.ok:
            version = _string(version_answer.get("version"))
        elif version_answer.status != 404 or not _is_banner(await self.probe_get(self.root + "/")):
            # Only a server older than /api/version may answer 404 there; "/" still says so.
            return ProbeResult(
                BackendStatus.UNHEALTHY,
                detail=f"/api/version answered HTTP {version_answer.status}",
            )
        if tags_answer.failure is not None:
            return tags_answer.unreachable()
        if not tags_answer.ok:
            return ProbeResult(
                BackendStatus.UNHEALTHY, detail=f"/api/tags answered HTTP {tags_answer.status}"
            )
        listed = tags_answer.get("models")
        try:
            if not isinstance(listed, list):
                raise TypeError("'models' is not a list")
            tags = [(str(entry["name"]), entry) for entry in listed if isinstance(entry, dict)]
        except (TypeError, KeyError) as exc:
            return ProbeResult(BackendStatus.UNHEALTHY, detail=f"unreadable model list: {exc}")
        self._loaded = _loaded_models(ps_answer)
        await self._show_new(tags)
        return ProbeResult(
            BackendStatus.HEALTHY,
            models=tuple(self._model(name, entry) for name, entry in tags),
            version=version,
        )

    async def _show_new(self, tags: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Ask ``/api/show`` about models the tags do not describe and that are new or changed."""
        names = {name for name, _ in tags}
        for name in [name for name in self._shown if name not in names]:
            del self._shown[name]
        waiting: list[asyncio.Task[None]] = []
        for name, entry in tags:
            capabilities, context = _tag_facts(entry)
            if capabilities is not None and context is not None:
                continue
            version = _version(entry)
            shown = self._shown.get(name)
            if shown is not None and shown.version == version:
                continue
            task = self._showing.get(name)
            if task is None:
                task = asyncio.get_running_loop().create_task(
                    self._show(name, version), name=f"nexus-ollama-show-{name}"
                )
                self._showing[name] = task
            waiting.append(task)
        if waiting:
            # Not cancelled when the budget runs out: a late answer is kept for the next probe.
            await asyncio.wait(waiting, timeout=self.show_budget_seconds)

    async def _show(self, name: str, version: ModelVersion) -> None:
        try:
            async with self._show_slots:
                response = await self.clients.probe.post(
                    self.root + "/api/show", json={"model": name}, headers=self.probe_headers
                )
            if response.status_code >= 500:
                return  # may pass: ask again at the next probe
            capabilities, context = (None, None)
            if response.status_code == 200:
                capabilities, context = _show_facts(response)
            # A 4xx is an answer too (a model without details): not asked again until it changes.
            self._shown[name] = ShownModel(version, capabilities, context)
        except httpx.HTTPError:
            return
        finally:
            if self._showing.get(name) is asyncio.current_task():
                del self._showing[name]

    def _model(self, name: str, entry: Mapping[str, Any]) -> ModelInfo:
        capabilities, context = _tag_facts(entry)
        shown = self._shown.get(name)
        if shown is not None and shown.version == _version(entry):
            capabilities = capabilities if capabilities is not None else shown.capabilities
            context = context if context is not None else shown.context_length

        def has(capability: str) -> bool | None:
            return None if capabilities is None else capability in capabilities

        loaded = self._loaded
        return ModelInfo(
            id=name,
            context_length=context,
            vision=has("vision"),
            tools=has("tools"),
            # Ollama constrains output to JSON (format / response_format) for any model that
            # generates text.
            json_mode=has("completion"),
            embeddings=has("embedding"),
            owned_by=namespace(name),
            # A model not in memory costs seconds to load: the router prefers warm backends.
            loaded=None if loaded is None else name in loaded,
        )

    # -- model lifecycle -------------------------------------------------------------------------

    async def lifecycle_support(self) -> LifecycleSupport:
        """Everything: listing, load, unload, and requests load what they need."""
        return SUPPORT

    async def available_models(self) -> ModelInventory:
        """``/api/tags`` with ``/api/ps``: each model, loaded or not, its size and memory."""
        tags, ps = await asyncio.gather(
            self.lifecycle_request("GET", self.root + "/api/tags", timeout=LIST_TIMEOUT_SECONDS),
            self.lifecycle_request("GET", self.root + "/api/ps", timeout=LIST_TIMEOUT_SECONDS),
        )
        on_disk = _entries(tags)
        in_memory = {_name(entry): entry for entry in _entries(ps)}
        models = [_available(entry, in_memory.get(_name(entry))) for entry in on_disk]
        listed = {model.id for model in models}
        # Loaded but gone from the tags (deleted while in memory): still serving.
        models += [
            _available(entry, entry) for name, entry in in_memory.items() if name not in listed
        ]
        used = [model.memory_bytes for model in models if model.loaded]
        known = [size for size in used if size is not None]
        return ModelInventory(
            tuple(models), memory_used_bytes=sum(known) if len(known) == len(used) else None
        )

    async def load_model(
        self,
        model: str,
        *,
        timeout: float = LOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> AvailableModel:
        """``POST /api/generate {"model": m}``: Ollama answers once the model is loaded."""
        deadline = deadline_in(timeout)
        entry = await self._entry(model)
        if entry.loaded:
            return entry
        answer = await self.lifecycle_request(
            "POST",
            self.root + "/api/generate",
            body={"model": model},
            timeout=time_left(deadline),
            check=False,
        )
        self._check_answer(answer, model, "load")

        async def loaded() -> AvailableModel | None:
            now = (await self.available_models()).get(model)
            return now if now is not None and now.loaded else None

        return await poll_until(
            loaded, timeout=time_left(deadline), what=f"loading '{model}' on {self.name}"
        )

    async def unload_model(
        self,
        model: str,
        *,
        timeout: float = UNLOAD_TIMEOUT_SECONDS,  # noqa: ASYNC109 - ModelLifecycle's contract
    ) -> None:
        """``POST /api/generate {"model": m, "keep_alive": 0}``, then ``/api/ps`` until it is
        gone (Ollama answers before its runner has stopped)."""
        deadline = deadline_in(timeout)
        entry = await self._entry(model)
        if not entry.loaded:
            return
        answer = await self.lifecycle_request(
            "POST",
            self.root + "/api/generate",
            body={"model": model, "keep_alive": 0},
            timeout=time_left(deadline),
            check=False,
        )
        self._check_answer(answer, model, "unload")

        async def gone() -> bool | None:
            now = (await self.available_models()).get(model)
            return True if now is None or not now.loaded else None

        await poll_until(
            gone, timeout=time_left(deadline), what=f"unloading '{model}' on {self.name}"
        )

    async def _entry(self, model: str) -> AvailableModel:
        entry = (await self.available_models()).get(model)
        if entry is None:
            raise LifecycleError(
                LifecycleFailure.UNKNOWN_MODEL,
                f"backend '{self.name}' has no model '{model}'",
                status=404,
            )
        return entry

    def _check_answer(self, answer: ProbeAnswer, model: str, operation: str) -> None:
        """Raise what a load or unload answer other than 200 means."""
        if answer.ok:
            return
        message = read_error(answer.content).message or f"HTTP {answer.status}"
        if answer.status == 404:
            raise LifecycleError(
                LifecycleFailure.UNKNOWN_MODEL,
                f"backend '{self.name}' has no model '{model}': {clip(message)}",
                status=404,
                body=answer.content,
            )
        if answer.status == 500:
            # Ollama's own failure to load: not enough memory, a runner that crashed.
            raise LifecycleError(
                LifecycleFailure.LOAD_FAILED,
                f"Ollama could not {operation} '{model}': {clip(message)}",
                status=500,
                body=answer.content,
            )
        raise self.answer_error(answer)

    async def close(self) -> None:
        """Stop ``/api/show`` requests still running."""
        tasks = list(self._showing.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        """True when ``/`` says ``Ollama is running`` and ``/api/version`` answers a version.

        Both: many web applications have an ``/api/version``; only Ollama has that banner. A
        server older than ``/api/version`` answers 404 there.
        """
        root = api_base(url).removesuffix("/v1")
        headers = bearer(api_key)
        banner, version = await asyncio.gather(
            probe_get(clients, root + "/", headers),
            probe_get(clients, root + "/api/version", headers),
        )
        if not _is_banner(banner) or version.failure is not None:
            return False
        if version.status == 404:
            return True
        return version.ok and _string(version.get("version")) is not None


def namespace(name: str) -> str:
    """Who a model belongs to, as Ollama's ``/v1/models`` says: ``library`` for plain names."""
    parts = name.rsplit(":", 1)[0].split("/") if "/" in name else [name]
    return parts[-2] if len(parts) > 1 else "library"


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_banner(answer: ProbeAnswer) -> bool:
    return answer.ok and answer.text.startswith(BANNER)


def _version(entry: Mapping[str, Any]) -> ModelVersion:
    digest, modified = entry.get("digest"), entry.get("modified_at")
    return (
        digest if isinstance(digest, str) else None,
        modified if isinstance(modified, str) else None,
    )


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _capabilities(value: Any) -> frozenset[str] | None:
    if not isinstance(value, list) or not value:
        return None
    return frozenset(item for item in value if isinstance(item, str))


def _tag_facts(entry: Mapping[str, Any]) -> tuple[frozenset[str] | None, int | None]:
    """Capabilities and context length from an ``/api/tags`` entry (v0.33+ has them)."""
    details = entry.get("details")
    context = _positive(details.get("context_length")) if isinstance(details, dict) else None
    return _capabilities(entry.get("capabilities")), context


def _show_facts(response: httpx.Response) -> tuple[frozenset[str] | None, int | None]:
    """Capabilities and training context length from an ``/api/show`` answer."""
    try:
        payload = response.json()
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    context = None
    info = payload.get("model_info")
    if isinstance(info, dict):
        architecture = info.get("general.architecture")
        context = _positive(info.get(f"{architecture}.context_length"))
        if context is None:
            context = next(
                (
                    found
                    for key, value in info.items()
                    if key.endswith(".context_length") and (found := _positive(value))
                ),
                None,
            )
    if context is None:
        details = payload.get("details")
        if isinstance(details, dict):
            context = _positive(details.get("context_length"))
    return _capabilities(payload.get("capabilities")), context


def _loaded_models(answer: ProbeAnswer) -> dict[str, LoadedModel] | None:
    """The models ``/api/ps`` lists, or None when it did not answer."""
    if not answer.ok:
        return None
    try:
        loaded = {}
        for entry in answer.payload["models"]:
            if not isinstance(entry, dict):
                continue
            name = str(entry.get("name") or entry["model"])
            expires = entry.get("expires_at")
            loaded[name] = LoadedModel(
                name=name,
                context_length=_positive(entry.get("context_length")),
                expires_at=expires if isinstance(expires, str) else None,
            )
    except (TypeError, KeyError):
        return None
    return loaded


def _entries(answer: ProbeAnswer) -> list[dict[str, Any]]:
    """The ``models`` of an ``/api/tags`` or ``/api/ps`` answer."""
    entries = answer.get("models")
    if not isinstance(entries, list):
        raise BackendError(ErrorKind.MALFORMED, "Ollama's model list has no 'models' list")
    return [entry for entry in entries if isinstance(entry, dict) and _name(entry)]


def _name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")


def _available(on_disk: Mapping[str, Any], in_memory: Mapping[str, Any] | None) -> AvailableModel:
    """One model from its ``/api/tags`` entry and, when loaded, its ``/api/ps`` entry."""
    if in_memory is None:
        return AvailableModel(_name(on_disk), ModelState.UNLOADED, _size(on_disk.get("size")))
    expires = _string(in_memory.get("expires_at"))
    return AvailableModel(
        _name(on_disk),
        ModelState.LOADED,
        size_bytes=_size(on_disk.get("size")) if on_disk is not in_memory else None,
        memory_bytes=_size(in_memory.get("size")),
        gpu_memory_bytes=_size(in_memory.get("size_vram")),
        context_length=_positive(in_memory.get("context_length")),
        detail=f"in memory until {expires} (keep-alive)" if expires else None,
    )


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@hookimpl
def register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``ollama`` backend type."""
    register("ollama", OllamaAdapter)
