"""Backend management: adding (type detection), probing, reconfiguring and removing backends,
and keeping the ones added at run time in the state store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from nexus_core.adapters import AdapterFactory, BackendStatus
from nexus_core.config import AUTO_TYPE, BACKEND_NAME, BACKEND_NAME_RULE, BackendConfig
from nexus_core.errors import GatewayError
from nexus_core.gateway.components import GatewayComponents
from nexus_core.registry import Backend

log = logging.getLogger("nexus.gateway")

__all__ = ["BACKENDS_COLLECTION", "BackendManagement", "name_from_url"]

#: The state-store collection of backends added at run time.
BACKENDS_COLLECTION = "backends"


#: Rank of a backend type without a ``detect_rank`` attribute (lower is more specific).
DEFAULT_DETECT_RANK = 50


class BackendManagement(GatewayComponents):
    """Add, probe, suspend, reconfigure, detect and remove backends; save run-time ones."""

    @property
    def backend_types(self) -> Mapping[str, AdapterFactory]:
        """Backend types known to this gateway (from plugins unless given)."""
        if self._backend_types is None:
            from nexus_core import plugins

            self._backend_types = dict(plugins.backend_types())
        return self._backend_types

    async def add_backend(
        self, backend: BackendConfig | Mapping[str, Any] | str, *, source: str = "api"
    ) -> Backend:
        """Register a backend (a config, a dict, or just a URL), probe it once, keep probing it.

        With type ``auto`` (the default) the server is asked what it is first.
        """
        if isinstance(backend, str):
            config = BackendConfig(name=name_from_url(backend), url=backend)
        elif isinstance(backend, BackendConfig):
            config = backend
        else:
            config = BackendConfig(**backend)
        if config.name in self.registry:
            raise GatewayError(
                409, f"A backend named '{config.name}' exists already", code="backend_exists"
            )
        undetected = False
        if config.type == AUTO_TYPE:
            detected = await self.detect_type(config.url, api_key=config.api_key())
            undetected = detected is None
            config = config.model_copy(update={"type": detected or "generic"})
        factory = self.backend_types.get(config.type)
        if factory is None:
            known = ", ".join(sorted(self.backend_types)) or "none"
            raise GatewayError(
                400,
                f"Unknown backend type '{config.type}' for backend '{config.name}' "
                f"(installed types: {known})",
                param="type",
                code="unknown_backend_type",
            )
        _check_cloud(config, factory)
        entry = Backend(
            name=config.name,
            config=config,
            adapter=factory(config, self.clients),
            zone=config.zone_for(factory.is_cloud),
            is_cloud=factory.is_cloud,
            source=source,
        )
        if undetected:
            self._undetected.add(entry.name)
        self.registry.add(entry)
        self.registry.set_models(entry, ())  # what the config declares, before any probe
        await self.resume_backend(entry)
        return entry

    async def _add_static(self, config: BackendConfig) -> None:
        """Add a configured backend; one whose server turns out not to fit its config (a cloud
        API without a key, detected only now) is left out with an error line, not a traceback."""
        try:
            await self.add_backend(config, source="static")
        except GatewayError as exc:
            log.error("backend %s not added: %s", config.name, exc.message)

    async def resume_backend(self, backend: Backend) -> None:
        """Probe a registered backend now and keep probing it (its counters are kept)."""
        await self.health.check(backend)
        if self.config.health_check.enabled:
            self.health.watch(backend)
        else:
            # Trusted as healthy: the one probe above only taught us its models.
            self.registry.set_status(backend, BackendStatus.HEALTHY, "health checks disabled")
            self.health.watch(backend, probe=False)

    async def suspend_backend(self, backend: Backend, reason: str) -> None:
        """Stop probing a backend and mark it ``unknown`` (not routable), keeping it registered.

        Requests already on it finish; ``resume_backend`` brings it back with its counters.
        """
        await self.health.unwatch(backend.name)
        backend.last_error = reason
        self.registry.set_status(backend, BackendStatus.UNKNOWN, reason)

    async def reconfigure_backend(self, backend: Backend, config: BackendConfig) -> None:
        """Swap a registered backend's config (URL, type...) and probe it again; counters stay."""
        factory = self.backend_types.get(config.type)
        if factory is None:
            raise GatewayError(
                400,
                f"Unknown backend type '{config.type}' for backend '{backend.name}'",
                param="type",
                code="unknown_backend_type",
            )
        _check_cloud(config, factory)
        old = backend.adapter
        backend.config = config
        backend.adapter = factory(config, self.clients)
        backend.is_cloud = factory.is_cloud
        backend.zone = config.zone_for(factory.is_cloud)
        backend.priority = config.priority
        backend.tier = config.tier
        backend.max_concurrent = config.max_concurrent
        backend.rerank()
        await old.close()
        await self.health.unwatch(backend.name)
        await self.resume_backend(backend)

    async def detect_type(self, url: str, *, api_key: str | None = None) -> str | None:
        """The most specific installed backend type that recognises the server at ``url``.

        Every type's ``detect`` runs at once (bounded by the probe timeout); among the types
        that answer yes, the lowest ``detect_rank`` wins (default 50, then by name), and
        ``generic`` only when nothing more specific does. None when nothing recognises it.
        """
        timeout = self.config.health_check.timeout_seconds

        async def check(name: str, factory: AdapterFactory) -> str | None:
            try:
                async with asyncio.timeout(timeout):
                    found = await factory.detect(url, self.clients, api_key=api_key)
            except Exception as exc:  # a detector that raises only means "not this type"
                log.debug("detect of %s as %s failed: %r", url, name, exc)
                return None
            return name if found else None

        types = self.backend_types
        answers = await asyncio.gather(*(check(name, factory) for name, factory in types.items()))
        matches = [name for name in answers if name is not None]
        if not matches:
            return None
        return min(
            matches,
            key=lambda name: (
                name == "generic",
                getattr(types[name], "detect_rank", DEFAULT_DETECT_RANK),
                name,
            ),
        )

    def _on_registry_event(self, event: str, backend: Backend) -> None:
        # A backend added while its server was down was typed generic; ask again once it is up.
        if (
            event == "status"
            and backend.status is BackendStatus.HEALTHY
            and backend.name in self._undetected
        ):
            self._undetected.discard(backend.name)
            task = asyncio.get_running_loop().create_task(self._redetect(backend))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _redetect(self, backend: Backend) -> None:
        detected = await self.detect_type(backend.config.url, api_key=backend.config.api_key())
        if detected is None or detected == backend.config.type:
            return
        if self.registry.get(backend.name) is not backend:
            return
        log.info("backend %s: detected type %s", backend.name, detected)
        try:
            await self.reconfigure_backend(
                backend, backend.config.model_copy(update={"type": detected})
            )
        except GatewayError as exc:
            # A server that turns out to be a cloud API its config does not fit (no key, or
            # forwarding the client's credentials) is not served as a local one either.
            log.error("backend %s: %s; not routed until its config is fixed", backend.name, exc)
            await self.suspend_backend(backend, exc.message)

    async def remove_backend(self, name: str) -> bool:
        """Remove a backend; requests already on it finish. False if there was none."""
        await self.health.unwatch(name)
        backend = self.registry.remove(name)
        if backend is None:
            return False
        await backend.adapter.close()
        return True

    def backends(self) -> list[dict[str, Any]]:
        """Every backend as a JSON-ready snapshot."""
        return [backend.snapshot() for backend in self.registry]

    def key_env_refusal(self, config: BackendConfig) -> GatewayError | None:
        """Why a backend added at run time may not name its ``api_key_env`` (None: it may).

        Only variables the configured backends already use, or ``auth.allowed_api_key_envs``
        lists, and never one of ``[auth]``'s or ``[state]``'s: whoever may add a backend must
        not be able to send the value of any variable of this process to a URL of their choice.
        """
        wanted = config.api_key_env
        if wanted is None:
            return None
        auth = self.config.auth
        reserved = {key.key_env for key in auth.keys}
        reserved.update(n for n in (auth.admin_key_env, self.config.state.redis_url_env) if n)
        allowed = {b.api_key_env for b in self.config.backends if b.api_key_env} | set(
            auth.allowed_api_key_envs
        )
        if wanted in allowed and wanted not in reserved:
            return None
        return GatewayError(
            400,
            f"api_key_env '{wanted}' is not a key variable this server may give a backend added "
            "at run time: only the variables of the configured backends and those listed in "
            "auth.allowed_api_key_envs (never a gateway, admin or state-store secret)",
            param="api_key_env",
            code="api_key_env_not_allowed",
        )

    async def save_backend(self, backend: Backend) -> None:
        """Keep a backend added at run time in the state store, so a restart brings it back."""
        data = backend.config.model_dump(mode="json", exclude_defaults=True)
        data["name"] = backend.config.name
        data["url"] = backend.config.url
        data["type"] = backend.config.type
        await self.accountant.store.put(
            BACKENDS_COLLECTION, backend.name, json.dumps(data, separators=(",", ":"))
        )

    async def forget_backend(self, name: str) -> None:
        """Stop bringing a backend back after restarts."""
        await self.accountant.store.delete(BACKENDS_COLLECTION, name)

    async def _restore_backends(self, saved: Mapping[str, str] | None = None) -> None:
        """Add the backends added at run time before the last stop (kept in the state store)."""
        if saved is None:
            try:
                saved = await self.accountant.store.items(BACKENDS_COLLECTION)
            except Exception as exc:
                log.error("could not read the backends added at run time: %s", exc)
                return
        static_urls = {b.url for b in self.config.backends}

        async def restore(name: str, raw: str) -> None:
            renamed = False
            try:
                data = json.loads(raw)
                if not isinstance(data, dict):
                    raise TypeError("not a JSON object")
                url = data.get("url")
                if isinstance(url, str) and not _valid_name(data.get("name")):
                    # Saved by a version that took any name: give it the one its URL makes.
                    data["name"] = name_from_url(url)
                    renamed = True
                config = BackendConfig(**data)
            except ValidationError as exc:
                self._refuse_saved(name, raw, _problems(exc))
                return
            except (ValueError, TypeError) as exc:
                self._refuse_saved(name, raw, str(exc))
                return
            if config.name in self.registry or config.url in static_urls:
                return  # the configuration wins
            refusal = self.key_env_refusal(config)
            if refusal is not None:  # the store may have been written by someone else
                log.error("backend %r saved in the state store: %s", name, refusal.message)
                return
            try:
                backend = await self.add_backend(config, source="admin")
            except GatewayError as exc:
                log.error("backend %r saved in the state store: %s", name, exc.message)
                return
            if renamed:
                log.warning(
                    "backend %r saved in the state store: the name is not valid (%s); restored as "
                    "%r",
                    name,
                    BACKEND_NAME_RULE,
                    backend.name,
                )
                await self.save_backend(backend)
                await self.accountant.store.delete(BACKENDS_COLLECTION, name)

        await asyncio.gather(*(restore(name, raw) for name, raw in saved.items()))

    def _refuse_saved(self, name: str, raw: str, problem: str) -> None:
        """Log a saved backend that cannot be restored, once per process (sync runs often)."""
        if (name, raw) in self._refused:
            return
        self._refused.add((name, raw))
        log.error("backend %r saved in the state store is refused: %s", name, problem)

    async def sync_backends(self) -> None:
        """Add the run-time backends another worker added; drop the ones it removed."""
        saved = await self.accountant.store.items(BACKENDS_COLLECTION)
        for backend in list(self.registry):
            if backend.source == "admin" and backend.name not in saved:
                await self.remove_backend(backend.name)
        missing = {name: raw for name, raw in saved.items() if name not in self.registry}
        if missing:
            await self._restore_backends(missing)


def _check_cloud(config: BackendConfig, factory: AdapterFactory) -> None:
    """400 when a backend of a cloud adapter lacks its key or would forward client credentials."""
    if not factory.is_cloud:
        return
    problems = config.cloud_problems()
    if problems:
        key, message = problems[0]
        raise GatewayError(
            400,
            f"Invalid backend '{config.name}': {key}: {message}",
            param=key,
            code="invalid_backend",
        )


#: Runs of characters a backend name may not hold (``BACKEND_NAME``).
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._~-]+")


def _problems(exc: ValidationError) -> str:
    """A validation error on one line: ``name: must be ...; url: ...``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: "
        f"{error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and BACKEND_NAME.fullmatch(name) is not None


def name_from_url(url: str) -> str:
    """A valid backend name from a URL: ``http://10.0.0.5:11434/v1`` -> ``10.0.0.5-11434``.

    An IPv6 host gets ``ip6-`` (``http://[::1]:8000`` -> ``ip6-1-8000``); any other character a
    name may not hold becomes ``-``; a name longer than 64 ends with a digest of the URL.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        host, port = "", None
    text = host if port is None else f"{host}-{port}"
    name = _NOT_IN_NAME.sub("-", text).strip("-._~")
    if ":" in host:
        name = f"ip6-{name}"
    if len(name) > 64:
        digest = hashlib.sha1(url.encode("utf-8", "replace")).hexdigest()[:8]
        name = f"{name[:55].rstrip('-._~')}-{digest}"
    return name if _valid_name(name) else "backend"
