"""Demand: how many requests asked for each model, per minute and per clock hour.

Pre-warming reads two figures per model from it: the requests of the last ``window`` seconds
(per-minute counts), and the requests at this clock hour (UTC) on each of the previous days
(per-hour counts). ``/v1/history`` keeps only the last 100 requests, too few for either. The
monitor already counts every finished request per model (``Monitor.by_model``: the model
served, else the model asked for when some backend lists it); this log samples those totals
(``catch_up``: every ``TICK_SECONDS`` in the background, and before every reading) and files
the difference under the minute and hour of the sample. A request therefore costs pre-warming
nothing; a count lands at most ``TICK_SECONDS`` late.

The per-minute counts live in memory only. The per-hour counts are also kept in the state store
(``sync``, once per pre-warming cycle), one record per hour and process, so the same hour of
previous days survives a restart and counts the requests every worker and every Nexus sharing
the store served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nexus_core.state import StateStore

__all__ = ["DemandLog", "ModelDemand"]

#: Distinct models counted in one minute or one hour; past it new names are not counted, so
#: clients inventing model names cannot grow the log (only models some backend lists count).
MAX_MODELS_PER_BUCKET = 512
#: The state store's collection of hourly counts: ``"<epoch hour>:<process id>"`` → JSON
#: ``{model: requests}``.
COLLECTION = "fleet_demand"
#: How often the background task samples the monitor's totals (seconds).
TICK_SECONDS = 15.0

#: Where the totals come from: each model's requests since start (``Monitor.by_model``).
Totals = Callable[[], Iterable[tuple[str, int]]]


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model's demand: requests in the recent window, and at this hour on previous days."""

    model: str
    #: Requests in the last ``window_seconds``.
    recent: int = 0
    #: Requests at this clock hour on the previous ``days`` days, in all.
    same_hour: int = 0
    #: How many previous days ``same_hour`` covers (``hour_lookback_days``).
    days: int = 0

    @property
    def same_hour_average(self) -> float:
        """Requests per day at this hour, over the days looked back (0 with none)."""
        return self.same_hour / self.days if self.days else 0.0

    def meets(self, min_requests: int) -> bool:
        """True when either figure reaches ``min_requests``."""
        return self.recent >= min_requests or (
            self.days > 0 and self.same_hour_average >= min_requests
        )


class DemandLog:
    """Requests per model, in per-minute and per-hour buckets, kept as long as they are read."""

    def __init__(
        self,
        *,
        window_seconds: float,
        lookback_days: int,
        clock: Callable[[], float] = time.time,
        totals: Totals | None = None,
    ) -> None:
        self.window_seconds = window_seconds
        #: The running totals sampled by ``catch_up`` (None: only ``record`` counts).
        self.totals = totals
        #: Each model's total at the last sample.
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.lookback_days = lookback_days
        self.clock = clock
        #: Epoch minute → model → requests.
        self._minutes: dict[int, dict[str, int]] = {}
        #: Epoch hour → model → requests.
        self._hours: dict[int, dict[str, int]] = {}
        self._minute = -1
        #: This process's name in the state store's records (new at every start).
        self.instance = os.urandom(6).hex()
        #: Epoch hour → model → requests, from the store: other processes', earlier runs'.
        self._others: dict[int, dict[str, int]] = {}
        #: Hours counted in since the last ``sync``.
        self._unsaved: set[int] = set()

    def record(self, model: str, at: float | None = None, count: int = 1) -> None:
        """Count ``count`` requests for ``model`` at ``at`` (default: now)."""
        when = self.clock() if at is None else at
        minute = int(when // 60)
        if minute != self._minute:
            self._minute = minute
            self._prune(when)
        _add(self._minutes, minute, model, count)
        hour = minute // 60
        _add(self._hours, hour, model, count)
        self._unsaved.add(hour)

    def catch_up(self, now: float | None = None) -> None:
        """File the requests the totals grew by since the last sample under ``now``."""
        if self.totals is None:
            return
        seen = self._seen
        for model, total in self.totals():
            before = seen.get(model, 0)
            if total != before:
                seen[model] = total
                # A total that went down was started again: all of it is new.
                self.record(model, now, total - before if total > before else total)

    def start(self) -> None:
        """Sample the totals every ``TICK_SECONDS`` until ``stop``."""
        if self.totals is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._tick(), name="nexus-fleet-demand"
            )

    async def stop(self) -> None:
        """End the sampling (a last sample first: nothing counted is left out)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.catch_up()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.catch_up()

    def demand(self, now: float | None = None) -> dict[str, ModelDemand]:
        """Every model asked for in the window or at this hour on the days looked back."""
        now = self.clock() if now is None else now
        self.catch_up(now)
        first_minute = int((now - self.window_seconds) // 60) + 1
        last_minute = int(now // 60)
        recent: dict[str, int] = {}
        for minute, counts in self._minutes.items():
            if first_minute <= minute <= last_minute:
                for model, count in counts.items():
                    recent[model] = recent.get(model, 0) + count
        hour = int(now // 3600)
        same_hour: dict[str, int] = {}
        for day in range(1, self.lookback_days + 1):
            for source in (self._hours, self._others):
                for model, count in source.get(hour - 24 * day, {}).items():
                    same_hour[model] = same_hour.get(model, 0) + count
        return {
            model: ModelDemand(
                model,
                recent=recent.get(model, 0),
                same_hour=same_hour.get(model, 0),
                days=self.lookback_days,
            )
            for model in sorted(recent.keys() | same_hour.keys())
        }

    async def sync(self, store: StateStore, now: float | None = None) -> None:
        """Save this process's counts of the hours counted in since the last call; read every
        other record of the hours looked back; delete the records older than those."""
        if self.lookback_days <= 0:
            return
        now = self.clock() if now is None else now
        self.catch_up(now)
        hour = int(now // 3600)
        unsaved, self._unsaved = self._unsaved, set()
        try:
            for each in sorted(unsaved):
                counts = self._hours.get(each)
                if counts:
                    await store.put(COLLECTION, f"{each}:{self.instance}", json.dumps(counts))
        except BaseException:
            self._unsaved |= unsaved  # saved next time
            raise
        oldest = hour - 24 * self.lookback_days
        others: dict[int, dict[str, int]] = {}
        for key, value in (await store.items(COLLECTION)).items():
            hour_text, _, instance = key.partition(":")
            try:
                stored_hour = int(hour_text)
                counts = json.loads(value)
            except ValueError:
                await store.delete(COLLECTION, key)  # not ours to read: not kept either
                continue
            if stored_hour < oldest:
                await store.delete(COLLECTION, key)
                continue
            if instance == self.instance or not isinstance(counts, dict):
                continue
            merged = others.setdefault(stored_hour, {})
            for model, count in counts.items():
                if type(count) is not int or count <= 0:
                    continue
                if model in merged or len(merged) < MAX_MODELS_PER_BUCKET:
                    merged[model] = merged.get(model, 0) + count
        self._others = others

    def _prune(self, now: float) -> None:
        oldest_minute = int((now - self.window_seconds) // 60)
        for minute in [m for m in self._minutes if m < oldest_minute]:
            del self._minutes[minute]
        oldest_hour = int(now // 3600) - 24 * self.lookback_days
        for hour in [h for h in self._hours if h < oldest_hour]:
            del self._hours[hour]


def _add(buckets: dict[int, dict[str, int]], key: int, model: str, count: int) -> None:
    counts = buckets.get(key)
    if counts is None:
        counts = buckets[key] = {}
    already = counts.get(model)
    if already is not None:
        counts[model] = already + count
    elif len(counts) < MAX_MODELS_PER_BUCKET:
        counts[model] = count
