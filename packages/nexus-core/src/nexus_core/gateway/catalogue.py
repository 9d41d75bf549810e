"""The model catalogue: what ``/v1/models`` and friends list, and the gateway's health summary."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from nexus_core.adapters import CAPABILITIES, BackendStatus, ModelInfo, ModelState
from nexus_core.auth import ApiKey
from nexus_core.gateway.components import GatewayComponents
from nexus_core.registry import Backend

__all__ = ["Catalogue"]


class Catalogue(GatewayComponents):
    """Models on healthy backends, merged by id, aliases included; ``health_summary``."""

    def list_models(self, key: ApiKey | None = None) -> list[dict[str, Any]]:
        """Models on healthy backends, one entry per id, with capabilities and backends.

        Each alias of ``routing.aliases`` whose target is listed appears under its own name
        with ``alias_of``; an alias whose target is not listed does not appear, even when a
        backend lists a model of that name (requests for it follow the alias). ``key``: only
        the models that gateway key may use (its ``models`` globs).
        """
        merged: dict[str, dict[str, Any]] = {}
        healthy = BackendStatus.HEALTHY
        created = int(self.started_at)
        for backend in self.registry:
            if backend.status is not healthy:
                continue
            for model in backend.models.values():
                entry = merged.get(model.id)
                if entry is None:
                    entry = merged[model.id] = {
                        "id": model.id,
                        "object": "model",
                        "created": created,
                        "owned_by": model.owned_by or backend.type_name,
                        "context_length": model.context_length,
                        "capabilities": {name: getattr(model, name) for name in CAPABILITIES},
                        "backends": [],
                    }
                else:
                    _merge_capabilities(entry, model)
                entry["backends"].append(backend.name)
        entries = dict(merged)
        resolve = self.router.resolve
        for alias in self.config.routing.aliases:
            # Routing follows an alias before it looks for a model of that name.
            target = merged.get(resolve(alias))
            if target is None:
                entries.pop(alias, None)
            else:
                entries[alias] = {**target, "id": alias, "alias_of": target["id"]}
        listed = sorted(entries.values(), key=lambda m: str(m["id"]))
        if key is None:
            return listed
        return [entry for entry in listed if key.allows(str(entry["id"]))]

    def model_ids(self, key: ApiKey | None = None) -> list[str]:
        """The ids of ``list_models(key)``: what a 404 ``model_not_found`` offers instead."""
        return [str(entry["id"]) for entry in self.list_models(key)]

    def model_count(self) -> int:
        """``len(self.list_models())`` without building its entries: ``/health`` stays cheap."""
        healthy = BackendStatus.HEALTHY
        served: set[str] = set()
        for backend in self.registry:
            if backend.status is healthy:
                served.update(backend.models)
        ids = set(served)
        resolve = self.router.resolve
        for alias in self.config.routing.aliases:
            if resolve(alias) in served:
                ids.add(alias)
            else:
                ids.discard(alias)
        return len(ids)

    def get_model(self, model_id: str, key: ApiKey | None = None) -> dict[str, Any] | None:
        """One entry of ``list_models(key)``, or None."""
        for entry in self.list_models(key):
            if entry["id"] == model_id:
                return entry
        return None

    def _now_loaded(self, backend: Backend, info: ModelInfo) -> None:
        """Mark ``info`` loaded on ``backend`` (it just answered with it) until a probe says."""
        self.registry.set_model_state(backend, info.id, ModelState.LOADED)
        models = [
            dataclasses.replace(model, loaded=True) if model is info else model
            for model in backend.models.values()
        ]
        self.registry.set_models(backend, models)

    def health_summary(self) -> dict[str, Any]:
        """``healthy`` when every backend is (or there is none), ``degraded`` when some are,
        ``unhealthy`` when there are backends and none is.

        No backend is no failure: nothing is there to fail yet (a fresh ``nexus serve`` waiting
        for a local Ollama, discovery or ``nexus backends add``). Whether anything can be served
        is ``/health/ready``'s question (503 without a healthy backend).
        """
        counts = {status.value: 0 for status in BackendStatus}
        for backend in self.registry:
            counts[backend.status.value] += 1
        total = len(self.registry)
        healthy = counts["healthy"]
        if healthy == total:
            status = "healthy"
        elif healthy:
            status = "degraded"
        else:
            status = "unhealthy"
        from nexus_core import __version__

        return {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "backends": {"total": total, **counts},
            "models": self.model_count(),
        }


def _merge_capabilities(entry: dict[str, Any], model: ModelInfo) -> None:
    context = model.context_length
    if context is not None:
        current = entry["context_length"]
        entry["context_length"] = context if current is None else max(current, context)
    caps = entry["capabilities"]
    for key in CAPABILITIES:
        value = getattr(model, key)
        if value is True or caps[key] is None:
            caps[key] = value
