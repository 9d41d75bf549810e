"""The pre-warming planner (``nexus_core.fleet.prewarm.plan``) and the demand log it reads."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_core import Gateway
from nexus_core.adapters import RESIDENT_STATES, AvailableModel, ModelState
from nexus_core.config import NexusConfig
from nexus_core.fleet.demand import COLLECTION, MAX_MODELS_PER_BUCKET, DemandLog, ModelDemand
from nexus_core.fleet.prewarm import BackendView, Plan, PlanSettings, plan
from nexus_core.observability import _Series
from nexus_core.state import MemoryStore, SqliteStore

MODELS = ("a", "b", "c", "d")
GIB = 1 << 30
MOSTLY_TRUE = st.sampled_from([True, True, True, False])

entry_st = st.builds(
    AvailableModel,
    id=st.sampled_from(MODELS),
    # Mostly loadable, so that plans have loads to check.
    state=st.one_of(st.just(ModelState.UNLOADED), st.sampled_from(list(ModelState))),
    size_bytes=st.one_of(st.none(), st.integers(1, 8).map(lambda n: n * GIB)),
    memory_bytes=st.one_of(st.none(), st.integers(1, 8).map(lambda n: n * GIB)),
)


@st.composite
def backend_st(draw: Any, name: str) -> BackendView:
    entries = draw(st.lists(entry_st, max_size=4, unique_by=lambda e: e.id))
    total = draw(st.one_of(st.none(), st.integers(4, 32).map(lambda n: n * GIB)))
    used = None if total is None else draw(st.integers(0, total))
    in_flight = draw(st.dictionaries(st.sampled_from(MODELS), st.integers(0, 3), max_size=2))
    busy = draw(st.frozensets(st.sampled_from(MODELS), max_size=1))
    return BackendView(
        name=name,
        healthy=draw(MOSTLY_TRUE),
        can_load=draw(MOSTLY_TRUE),
        models=tuple(entries),
        memory_total_bytes=total,
        memory_used_bytes=used,
        in_flight=in_flight,
        busy=busy,
    )


fleet_st = st.integers(1, 5).flatmap(
    lambda n: st.tuples(*(backend_st(f"b{i}") for i in range(n))).map(list)
)
demand_st = st.dictionaries(
    st.sampled_from(MODELS),
    st.tuples(st.integers(0, 20), st.integers(0, 50), st.integers(0, 7)),
    max_size=4,
).map(
    lambda found: {
        model: ModelDemand(model, recent=r, same_hour=h, days=d)
        for model, (r, h, d) in found.items()
    }
)
settings_st = st.builds(
    PlanSettings,
    min_requests=st.integers(1, 10),
    backends_per_model=st.integers(1, 4),
    max_loads=st.integers(1, 4),
    headroom_percent=st.sampled_from([0.0, 20.0, 50.0]),
)


def by_name(fleet: list[BackendView]) -> dict[str, BackendView]:
    return {view.name: view for view in fleet}


@settings(max_examples=300, deadline=None)
@given(demand=demand_st, fleet=fleet_st, config=settings_st)
def test_plan_properties(
    demand: dict[str, ModelDemand], fleet: list[BackendView], config: PlanSettings
) -> None:
    result = plan(demand, fleet, config)
    views = by_name(fleet)
    # Never more loads than a cycle may start, never twice the same (model, backend).
    assert len(result.loads) <= config.max_loads
    assert len({(load.model, load.backend) for load in result.loads}) == len(result.loads)
    memory_after = {view.name: view.memory_used_bytes or 0 for view in fleet}
    for load in result.loads:
        view = views[load.backend]
        entry = view.entry(load.model)
        # Only a model the backend lists unloaded (or asleep), on a healthy backend that can
        # load, with no operation on that model there, for a model in demand.
        assert entry is not None
        assert entry.state in (ModelState.UNLOADED, ModelState.SLEEPING)
        assert view.healthy
        assert view.can_load
        assert load.model not in view.busy
        assert demand[load.model].meets(config.min_requests)
        # Never where a request for another model is in flight (its server might evict it).
        assert all(n == 0 for m, n in view.in_flight.items() if m != load.model)
        needed = entry.memory_bytes or entry.size_bytes
        if needed is not None:
            memory_after[view.name] += needed
    # Within the headroom wherever the total and the sizes are known (the loads together).
    for view in fleet:
        if view.memory_total_bytes is None:
            continue
        planned = [load for load in result.loads if load.backend == view.name]
        sized = [
            load for load in planned if load.model_bytes is not None
        ]  # a load of unknown size is not checked, as Operations.start does not
        if sized:
            allowed = view.memory_total_bytes * (1 - config.headroom_percent / 100)
            assert memory_after[view.name] <= allowed
    # No model is loaded past its target.
    for model_plan in result.models:
        resident = len(model_plan.loaded_on) + len(model_plan.loading_on)
        if model_plan.loads:
            assert resident + len(model_plan.loads) <= model_plan.target
            assert model_plan.in_demand


@settings(max_examples=100, deadline=None)
@given(demand=demand_st, fleet=fleet_st, config=settings_st, seed=st.integers(0, 1000))
def test_plan_is_deterministic(
    demand: dict[str, ModelDemand],
    fleet: list[BackendView],
    config: PlanSettings,
    seed: int,
) -> None:
    first = plan(demand, fleet, config)
    shuffled_fleet = list(fleet)
    random.Random(seed).shuffle(shuffled_fleet)
    items = list(demand.items())
    random.Random(seed + 1).shuffle(items)
    assert plan(dict(items), shuffled_fleet, config) == first


def test_plan_has_no_unloads() -> None:
    """Pre-warming only loads: a plan has no unload to recommend, whatever is idle."""
    assert set(Plan.__dataclass_fields__) == {"loads", "models"}


def view(name: str, *entries: AvailableModel, **fields: Any) -> BackendView:
    return BackendView(name=name, healthy=True, can_load=True, models=entries, **fields)


def test_a_model_in_demand_is_loaded_where_it_is_not() -> None:
    demand = {"m": ModelDemand("m", recent=5)}
    fleet = [
        view("one", AvailableModel("m", ModelState.LOADED)),
        view("two", AvailableModel("m", ModelState.UNLOADED)),
    ]
    result = plan(demand, fleet, PlanSettings(min_requests=3, backends_per_model=2))
    assert [(load.model, load.backend) for load in result.loads] == [("m", "two")]
    assert "5 request(s) in the window" in result.loads[0].reason
    assert "loaded on 1 of the 2 backend(s) wanted" in result.loads[0].reason
    # Below the demand threshold: nothing.
    assert plan(demand, fleet, PlanSettings(min_requests=6, backends_per_model=2)).loads == ()
    # Already on as many backends as wanted: nothing.
    assert plan(demand, fleet, PlanSettings(min_requests=3, backends_per_model=1)).loads == ()


def test_demand_at_this_hour_on_previous_days_counts() -> None:
    demand = {"m": ModelDemand("m", recent=0, same_hour=21, days=7)}
    fleet = [view("one", AvailableModel("m", ModelState.UNLOADED))]
    result = plan(demand, fleet, PlanSettings(min_requests=3))
    assert [load.backend for load in result.loads] == ["one"]
    assert "3 a day at this hour over 7 day(s)" in result.loads[0].reason


def test_a_backend_serving_another_model_gets_no_load() -> None:
    demand = {"m": ModelDemand("m", recent=9)}
    fleet = [
        view(
            "one",
            AvailableModel("m", ModelState.UNLOADED),
            AvailableModel("x", ModelState.LOADED),
            in_flight={"x": 2},
        )
    ]
    result = plan(demand, fleet, PlanSettings())
    assert result.loads == ()
    (skip,) = result.models[0].skipped
    assert skip.reason == "serving_other_models"
    assert "x (2)" in skip.detail


def test_headroom_counts_this_cycles_loads() -> None:
    demand = {"a": ModelDemand("a", recent=9), "b": ModelDemand("b", recent=8)}
    fleet = [
        view(
            "one",
            AvailableModel("a", ModelState.UNLOADED, size_bytes=3 * GIB),
            AvailableModel("b", ModelState.UNLOADED, size_bytes=3 * GIB),
            memory_total_bytes=10 * GIB,
            memory_used_bytes=2 * GIB,
        )
    ]
    result = plan(demand, fleet, PlanSettings(max_loads=2, headroom_percent=20))
    # 2 + 3 = 5 GiB fits in 8; 5 + 3 = 8 fits; a third would not. Both load, in demand order.
    assert [load.model for load in result.loads] == ["a", "b"]
    assert result.loads[1].memory_used_bytes == 5 * GIB
    tight = plan(demand, fleet, PlanSettings(max_loads=2, headroom_percent=40))
    assert [load.model for load in tight.loads] == ["a"]
    skip = next(s for m in tight.models if m.demand.model == "b" for s in m.skipped)
    assert skip.reason == "no_headroom"


def test_max_loads_per_cycle_is_said() -> None:
    demand = {"a": ModelDemand("a", recent=9), "b": ModelDemand("b", recent=8)}
    fleet = [
        view("one", AvailableModel("a", ModelState.UNLOADED)),
        view("two", AvailableModel("b", ModelState.UNLOADED)),
    ]
    result = plan(demand, fleet, PlanSettings(max_loads=1))
    assert [(load.model, load.backend) for load in result.loads] == [("a", "one")]
    assert [s.reason for s in result.models[1].skipped] == ["max_loads_per_cycle"]


def test_resident_states_count_towards_the_target() -> None:
    for state in RESIDENT_STATES:
        demand = {"m": ModelDemand("m", recent=9)}
        fleet = [
            view("one", AvailableModel("m", state)),
            view("two", AvailableModel("m", ModelState.UNLOADED)),
        ]
        assert plan(demand, fleet, PlanSettings(backends_per_model=1)).loads == ()


# -- the demand log ------------------------------------------------------------------------------


def test_demand_log_counts_the_window_and_the_same_hour() -> None:
    now = 1_800_000_000.0  # a fixed instant
    log = DemandLog(window_seconds=600, lookback_days=3, clock=lambda: now)
    for _ in range(4):
        log.record("m", now - 60)  # in the window
    log.record("m", now - 3600)  # out of the window, not this hour yesterday
    for day in (1, 2):
        log.record("m", now - day * 86400)  # this hour on previous days
    log.record("m", now - 4 * 86400)  # beyond the lookback (and pruned)
    log.record("m", now)
    found = log.demand(now)["m"]
    assert found.recent == 5
    assert found.same_hour == 2
    assert found.days == 3
    assert found.same_hour_average == 2 / 3


def test_the_log_files_what_the_totals_grew_by_under_the_minute_it_samples() -> None:
    now = 1_800_000_000.0
    totals = {"m": 3}
    log = DemandLog(
        window_seconds=600, lookback_days=1, clock=lambda: now, totals=lambda: totals.items()
    )
    log.catch_up(now - 900)  # three requests, sampled before the window began
    totals["m"] = 7
    totals["n"] = 2
    found = log.demand(now)  # a reading samples first: four more of m, two of n, now
    assert (found["m"].recent, found["n"].recent) == (4, 2)
    assert log.demand(now)["m"].recent == 4  # nothing new: nothing counted twice
    totals["m"] = 1  # the totals started again (a new monitor): all of it is new
    assert log.demand(now)["m"].recent == 5


def test_requests_through_a_gateway_reach_the_log_without_a_listener() -> None:
    gateway = Gateway(NexusConfig())
    assert gateway.monitor.subscribers == []  # nothing runs per request for pre-warming
    series = gateway.monitor.by_model.setdefault("m", _Series())
    series.requests = 3
    assert gateway.demand.demand()["m"].recent == 3


def test_demand_log_is_bounded() -> None:
    log = DemandLog(window_seconds=600, lookback_days=1, clock=lambda: 0.0)
    for index in range(MAX_MODELS_PER_BUCKET + 10):
        log.record(f"made-up-{index}", 30.0)
    assert len(log.demand(30.0)) == MAX_MODELS_PER_BUCKET


# -- the hourly counts in the state store --------------------------------------------------------

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.mark.anyio
async def test_previous_days_survive_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        before = DemandLog(window_seconds=600, lookback_days=3, clock=lambda: NOW - DAY)
        for _ in range(5):
            before.record("m", NOW - DAY)
        await before.sync(store)  # what the running Nexus saves each cycle
    finally:
        await store.close()
    reopened = SqliteStore(tmp_path / "state.db")
    await reopened.open()
    try:
        after = DemandLog(window_seconds=600, lookback_days=3, clock=lambda: NOW)
        assert "m" not in after.demand(NOW)
        await after.sync(reopened)
        found = after.demand(NOW)["m"]
        assert (found.recent, found.same_hour) == (0, 5)
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_processes_sharing_a_store_count_each_others_requests() -> None:
    store = MemoryStore()
    first = DemandLog(window_seconds=600, lookback_days=2, clock=lambda: NOW)
    second = DemandLog(window_seconds=600, lookback_days=2, clock=lambda: NOW)
    first.record("m", NOW - 2 * DAY)
    await first.sync(store, NOW - 2 * DAY + 60)
    first.record("m", NOW - DAY)
    second.record("m", NOW - DAY)
    for log in (first, second, first, second):  # cycles, in any order, many times
        await log.sync(store, NOW - DAY + 60)
    await first.sync(store)
    await second.sync(store)
    # Each sees its own (in memory) and the other's (from the store), never twice.
    assert first.demand(NOW)["m"].same_hour == 3
    assert second.demand(NOW)["m"].same_hour == 3


@pytest.mark.anyio
async def test_old_and_unreadable_records_are_dropped() -> None:
    store = MemoryStore()
    hour = int(NOW // 3600)
    await store.put(COLLECTION, f"{hour - 24 * 5}:gone", json.dumps({"m": 9}))
    await store.put(COLLECTION, f"{hour - 24}:other", json.dumps({"m": 2, "n": "x", "o": -1}))
    await store.put(COLLECTION, "garbage", "not json")
    log = DemandLog(window_seconds=600, lookback_days=2, clock=lambda: NOW)
    await log.sync(store)
    assert set(await store.items(COLLECTION)) == {f"{hour - 24}:other"}
    assert {m: d.same_hour for m, d in log.demand(NOW).items()} == {"m": 2}
