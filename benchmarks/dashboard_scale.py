"""The dashboard with 20,000 models across backends: time of each step the server runs on its loop.

A Gateway's registry is filled directly (no network): ``--backends`` healthy backends with
``--models`` distinct model ids in all, plus ``--shared`` ids every backend serves (the same
model on every box, as real fleets have), and one request per backend in the history and the
charts. Each figure is the median (and the worst) of ``--rounds`` runs of one synchronous call,
so the worst is how long that call holds the event loop. A full garbage collection runs before
the first round: one over a fresh fleet of 20,000 models takes 50-100 ms whatever code triggers it,
and would be charged to whichever call came first.

Run: uv run python benchmarks/dashboard_scale.py [--backends 8] [--models 20000] [--shared 20]
     [--rounds 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from nexus_core.adapters import BackendStatus, ModelInfo, ModelState
from nexus_core.config import BackendConfig, validate_config
from nexus_core.gateway import Gateway
from nexus_core.observability import RequestRecord
from nexus_core.registry import Backend
from nexus_server.dashboard import Dashboard, render_page
from nexus_server.dashboard.render import manage_section, matrix_fragments


def fleet(backends: int, models: int, shared: int) -> Gateway:
    """A gateway whose registry holds ``backends`` healthy backends and ``models`` model ids."""
    gateway = Gateway(
        validate_config({"discovery": {"enabled": False}, "state": {"backend": "memory"}})
    )
    registry = gateway.registry
    for index in range(backends):
        config = BackendConfig(name=f"box-{index:03d}", url=f"http://127.0.0.1:{9000 + index}")
        backend = Backend(
            name=config.name,
            config=config,
            adapter=None,  # type: ignore[arg-type]  # the dashboard never calls it
            zone=config.zone_for(False),
            is_cloud=False,
        )
        registry.add(backend)
        own = range(index, models, backends)
        ids = [f"family-{i % 97:02d}/model-{i:05d}:q4_K_M" for i in own]
        ids += [f"shared-{i:02d}:latest" for i in range(shared)]
        registry.set_models(backend, [ModelInfo(model, context_length=8192) for model in ids])
        backend.status = BackendStatus.HEALTHY
        backend.latency_ms = 10.0 + index
        gateway.monitor.finish(
            RequestRecord(request_id=f"r{index}", model=ids[0], backend=backend.name, status=200)
        )
    return gateway


def change_models(gateway: Gateway) -> None:
    """Add or drop one model on the first backend, as a probe that found a change would."""
    backend = next(iter(gateway.registry))
    models = list(backend.models.values())
    extra = ModelInfo("aaa-new-model:latest")
    if backend.models.get(extra.id) is None:
        models.append(extra)
    else:
        models.remove(backend.models[extra.id])
    gateway.registry.set_models(backend, models)


def timed(
    call: Callable[[], Any], rounds: int, before: Callable[[], None] | None = None
) -> tuple[float, float, Any]:
    """Median and worst milliseconds of ``rounds`` calls (``before`` each, untimed), the result."""
    result = None
    spent = []
    for _ in range(rounds):
        if before is not None:
            before()
        started = time.perf_counter()
        result = call()
        spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(spent), max(spent), result


def encode(message: dict[str, Any]) -> str:
    """As the dashboard encodes its messages."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--models", type=int, default=20_000)
    parser.add_argument("--shared", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    gateway = fleet(args.backends, args.models, args.shared)
    dashboard = Dashboard(gateway)
    gc.collect()
    rounds = args.rounds
    listed = sum(len(b.models) for b in gateway.registry)
    print(
        f"{args.backends} backends, {len(gateway.registry.model_ids())} distinct models, "
        f"{listed} (backend, model) pairs; median / worst of {rounds} runs"
    )

    snap = timed(dashboard.snapshot, rounds)
    snapshot = snap[2]
    changed = timed(dashboard.snapshot, rounds, before=lambda: change_models(gateway))
    page = timed(lambda: render_page(snapshot), rounds)
    handler = timed(lambda: render_page(dashboard.snapshot()), rounds)
    encoded = timed(lambda: encode(snapshot), rounds)

    def step() -> Any:
        # What the feed does once per 2 s step: every part of the page out of date rendered
        # again, the fragments that changed encoded into one message (the cards of backends
        # that served a request in the last five minutes change every step).
        dashboard._step -= 1
        dashboard._sent = {}
        dashboard._cards.clear()
        dashboard.flush()
        return dashboard.everything()

    every_step = timed(step, rounds)
    served = timed(dashboard.page, rounds)
    views = [dashboard.backend(b) for b in gateway.registry]

    def forget_matrix() -> None:
        dashboard._matrix = None

    def matrix() -> str:
        return matrix_fragments(views, dashboard.matrix())["matrix"]

    plain_matrix = timed(matrix, rounds, before=forget_matrix)
    # Every model's lifecycle state known on every backend (servers with lifecycle operations):
    # each cell then carries the state and its load or unload button.
    for backend in gateway.registry:
        backend.model_states = {
            model: ModelState.LOADED if index % 2 else ModelState.UNLOADED
            for index, model in enumerate(sorted(backend.models))
        }
    stated_matrix = timed(matrix, rounds, before=forget_matrix)
    token = "x" * 43
    names = [b.name for b in gateway.registry]
    matrix_models = [row["model"] for row in dashboard.matrix()["rows"]]

    def operator_page() -> str:
        # GET / for an operator: the shared page plus the operator's own section.
        viewer = manage_section(
            token, signed_in=True, types=["ollama"], backends=names, models=matrix_models
        )
        return dashboard.page(viewer, operator=True)

    operator = timed(operator_page, rounds)
    rows = [
        ("Dashboard.snapshot()", snap, None),
        ("snapshot after a models change", changed, None),
        ("render_page(snapshot)", page, len(page[2].encode())),
        ("render_page(Dashboard.snapshot())", handler, len(handler[2].encode())),
        ("GET / (Dashboard.page())", served, len(served[2].encode())),
        ("JSON of the snapshot", encoded, len(encoded[2].encode())),
        ("one step of the feed (every card)", every_step, len(every_step[2].encode())),
        ("the matrix, rendered", plain_matrix, len(plain_matrix[2].encode())),
        ("the matrix, every model's state", stated_matrix, len(stated_matrix[2].encode())),
        ("GET / for an operator (controls)", operator, len(operator[2].encode())),
    ]
    for label, (median, worst, _), size in rows:
        text = f"{label:34s} {median:8.1f} ms  worst {worst:8.1f} ms"
        if size is not None:
            text += f"  {size / 1024:9.1f} KiB"
        print(text)


if __name__ == "__main__":
    main()
