"""Accounting: what each answer cost, the monthly spend it adds to, and the budget's state.

Spend is counted in integer nano-USD (1e-9 USD), so sums are exact. Each attempt on a priced
route is recorded in two steps through the state store (``nexus_core.state``):

1. before the request leaves, a *reservation* of its estimated cost is written;
2. when the answer's ``usage`` is known, one atomic *settle* replaces the reservation with the
   actual cost (0 when the attempt failed: providers do not bill failed requests).

So a process killed mid-request leaves its reservation counted at the estimate (spend is never
lost) and a settled request is never counted twice. The budget's state (normal, soft limit,
exceeded) is kept in memory for the router and refreshed from the store, which with Redis
carries the other replicas' spend, at most ``REFRESH_SECONDS`` old.

When the store fails, a request on a priced route is refused (``StateError``, which the gateway
answers with 503 ``state_unavailable``): Nexus never sends a request whose cost it cannot
record. A settle that fails (a stream ending while the store is down, say) is logged once per
failure burst and not retried: the reservation stays counted at its estimate, never twice.

The month is the calendar month in UTC; at 00:00 UTC on the 1st the spend starts again from the
new month's total (0 unless another replica spent already).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nexus_core.config import BudgetConfig, HardLimitAction, PriceEntry
from nexus_core.pricing import Price, PriceBook, cost_nano_usd, estimate_nano_usd
from nexus_core.registry import Backend
from nexus_core.state import StateError, StateStore, StoreOutage

log = logging.getLogger("nexus.accounting")

#: How often the spend is re-read from the store (other replicas' spend, with Redis).
REFRESH_SECONDS = 0.5
#: Completion tokens assumed for a reservation when the request sets no ``max_tokens``.
DEFAULT_COMPLETION_ESTIMATE = 1000
#: The scope of the gateway-wide budget in the state store.
GLOBAL_SCOPE = "global"

NANO_PER_USD = 1_000_000_000

OK, SOFT, EXCEEDED = 0, 1, 2
STATUS_NAMES = ("ok", "soft_limit", "exceeded")


def key_scope(name: str) -> str:
    """The state-store scope of a gateway key's own spend."""
    return f"key:{name}"


def month_of(timestamp: float) -> str:
    """The UTC calendar month of a Unix time, as ``YYYY-MM``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def next_month_start(timestamp: float) -> float:
    """Unix time of the next 00:00 UTC on the 1st after ``timestamp``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def usd(nano: int) -> float:
    """Nano-USD as dollars."""
    return nano / NANO_PER_USD


def completion_estimate(data: Mapping[str, Any]) -> int:
    """Completion tokens a request may produce: its ``max_tokens`` or a default."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_COMPLETION_ESTIMATE


class Charge:
    """The cost of one attempt on a priced route: reserved before sending, settled once."""

    __slots__ = (
        "_accountant",
        "entry",
        "estimate",
        "key",
        "period",
        "price",
        "request_id",
        "settled",
    )

    def __init__(
        self,
        accountant: Accountant,
        price: Price,
        entry: str,
        period: str,
        estimate: int,
        key: str | None = None,
        request_id: str = "",
    ) -> None:
        self._accountant = accountant
        self.price = price
        self.entry = entry
        self.period = period
        self.estimate = estimate
        #: The gateway key the request came with: its own monthly spend counts this too.
        self.key = key
        #: The request it is for (named by a log line if recording its cost fails).
        self.request_id = request_id
        #: The final cost once settled (nano-USD).
        self.settled: int | None = None

    def cost_of(self, usage: Any) -> int | None:
        """The cost of an OpenAI ``usage`` object at this route's price (None: unusable)."""
        return cost_nano_usd(self.price, usage) if isinstance(usage, Mapping) else None

    def settle(self, amount: int) -> None:
        """Record the final cost (only the first call counts); written in the background."""
        if self.settled is not None:
            return
        self.settled = amount
        self._accountant._settle(self, amount)


class StreamMeter:
    """Settles a priced stream's charge from its usage, or from an estimate if none came."""

    __slots__ = ("charge", "prompt_tokens")

    def __init__(self, charge: Charge, *, prompt_tokens: int) -> None:
        self.charge = charge
        self.prompt_tokens = prompt_tokens

    def usage(self, usage: Mapping[str, Any]) -> None:
        """The stream reported its usage: settle at its cost."""
        cost = self.charge.cost_of(usage)
        if cost is not None:
            self.charge.settle(cost)

    def finish(self, chunks: int) -> None:
        """The stream ended: without a usage report, settle an estimate of what was produced."""
        if self.charge.settled is not None:
            return
        # One chunk is about one token; the provider bills what it generated before the break.
        self.charge.settle(estimate_nano_usd(self.charge.price, self.prompt_tokens, chunks))


class Accountant:
    """Prices routes, records spend durably and keeps the budget state the router reads.

    ``status`` is OK, SOFT or EXCEEDED; the router reads ``prefer_local`` (soft limit or over)
    and ``blocks_cloud``, the gateway ``blocks_all``. All three are plain attributes updated
    whenever the spend changes, so a request pays no arithmetic for them.
    """

    def __init__(
        self,
        budget: BudgetConfig,
        pricing: Sequence[PriceEntry],
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        scope: str = GLOBAL_SCOPE,
    ) -> None:
        self.budget = budget
        self.prices = PriceBook(pricing)
        self.store = store
        self.clock = clock
        self.scope = scope
        limit = budget.monthly_limit_usd
        self.limit: int | None = None if limit is None else round(limit * NANO_PER_USD)
        self.soft: int | None = (
            None if self.limit is None else math.floor(self.limit * budget.soft_limit_percent / 100)
        )
        now = clock()
        self.period = month_of(now)
        self._rollover = next_month_start(now)
        #: Spend of this period (settled + reserved), nano-USD, as last known.
        self.spent = 0
        self.status = OK
        self.prefer_local = False
        self.blocks_cloud = False
        self.blocks_all = False
        self._ids = itertools.count()
        self._prefix = f"{os.getpid()}-{time.time_ns():x}-"
        self._writes: set[asyncio.Task[None]] = set()
        #: This month's spend per gateway key (nano-USD), for the keys' own budgets.
        self.key_spent: dict[str, int] = {}
        self._refresher: asyncio.Task[None] | None = None
        #: Logs store failures once per burst (the gateway shares it with its key ring).
        self.outage = StoreOutage(store.kind)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, read this month's spend and keep it fresh."""
        await self.store.open()
        await self.refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        """Finish pending writes, stop refreshing and close the store."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.store.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read this period's spend from the store."""
        self.roll()
        period = self.period
        try:
            total = await self.store.total(self.scope, period)
        except Exception as exc:  # the budget keeps its last known state
            self.outage.failed("read the spend", exc)
            return
        if period == self.period:
            self._set_spent(total)
        for name in list(self.key_spent):
            try:
                spent = await self.store.total(key_scope(name), period)
            except Exception as exc:
                self.outage.failed("read the spend", exc)
                return
            if period == self.period:
                self.key_spent[name] = spent

    # -- budget state ---------------------------------------------------------------------------

    def roll(self) -> None:
        """Start a new month's spend when the clock passed 00:00 UTC on the 1st."""
        now = self.clock()
        if now < self._rollover:
            return
        self.period = month_of(now)
        self._rollover = next_month_start(now)
        log.info("budget: a new month (%s) begins; spend starts from the stored total", self.period)
        self._set_spent(0)
        for name in self.key_spent:
            self.key_spent[name] = 0

    async def track_key(self, name: str) -> int:
        """Start keeping the key's spend this month (read from the store the first time).

        ``StateError`` when the store cannot say: a budget is never checked against a guess.
        """
        spent = self.key_spent.get(name)
        if spent is None:
            self.roll()
            spent = await self.store.total(key_scope(name), self.period)
            self.key_spent[name] = spent
        return spent

    def _set_spent(self, spent: int) -> None:
        self.spent = spent
        limit = self.limit
        if limit is None:
            return
        assert self.soft is not None
        status = EXCEEDED if spent >= limit else SOFT if spent >= self.soft else OK
        if status != self.status:
            log.warning(
                "budget: %s (spent $%.4f of $%.2f this month)",
                STATUS_NAMES[status],
                usd(spent),
                usd(limit),
            )
        self.status = status
        self.prefer_local = status != OK
        action = self.budget.hard_limit_action
        self.blocks_cloud = status == EXCEEDED and action is HardLimitAction.BLOCK_CLOUD
        self.blocks_all = status == EXCEEDED and action is HardLimitAction.BLOCK_ALL

    def seconds_to_rollover(self) -> float:
        """Seconds until the month's spend starts again."""
        return max(0.0, self._rollover - self.clock())

    def headers(self) -> dict[str, str]:
        """``X-Nexus-Budget-*`` response headers (empty without a monthly limit)."""
        limit = self.limit
        if limit is None:
            return {}
        self.roll()
        spent = self.spent
        utilization = 100.0 * spent / limit if limit else 100.0
        return {
            "X-Nexus-Budget-Status": STATUS_NAMES[self.status],
            "X-Nexus-Budget-Utilization": f"{utilization:.1f}",
            "X-Nexus-Budget-Remaining": f"{usd(max(0, limit - spent)):.4f}",
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready budget state for stats and APIs."""
        self.roll()
        limit = self.limit
        return {
            "period": self.period,
            "spent_usd": round(usd(self.spent), 9),
            "limit_usd": None if limit is None else usd(limit),
            "status": STATUS_NAMES[self.status],
            "hard_limit_action": self.budget.hard_limit_action.value,
            "resets_in_seconds": round(self.seconds_to_rollover()),
            "store": self.store.kind,
        }

    # -- charges ----------------------------------------------------------------------------

    def price(self, backend: Backend, model: str) -> Price | None:
        """What ``model`` costs on ``backend`` (None: not priced, so free)."""
        return self.prices.lookup(backend.name, backend.is_cloud, model, backend.adapter)

    async def open_charge(
        self,
        price: Price,
        prompt_tokens: int,
        completion_tokens: int,
        key: str | None = None,
        request_id: str = "",
    ) -> Charge:
        """Reserve the estimated cost of one attempt before it is sent.

        ``StateError`` when the store cannot record it: the attempt must not be sent.
        """
        self.roll()
        estimate = estimate_nano_usd(price, prompt_tokens, completion_tokens)
        entry = self._prefix + str(next(self._ids))
        charge = Charge(self, price, entry, self.period, estimate, key, request_id)
        store = self.store
        # Counted at once, so requests arriving meanwhile see it; taken back if not recorded.
        self._set_spent(self.spent + estimate)
        try:
            await store.reserve(self.scope, charge.period, entry, estimate)
        except StateError:
            self._set_spent(self.spent - estimate)
            raise
        if key is not None:
            self.key_spent[key] = self.key_spent.get(key, 0) + estimate
            try:
                await store.reserve(key_scope(key), charge.period, entry, estimate)
            except StateError:
                self.key_spent[key] -= estimate
                self._set_spent(self.spent - estimate)
                # The global reservation went in: give it back (once, in the background; if
                # that fails too it stays counted at its estimate, on the budget's side).
                self._write(charge, 0, key_too=False)
                raise
        if self.outage.failing:
            self.outage.recovered()
        return charge

    def _settle(self, charge: Charge, amount: int) -> None:
        if charge.period == self.period:
            self._set_spent(self.spent - charge.estimate + amount)
            if charge.key is not None:
                self.key_spent[charge.key] = (
                    self.key_spent.get(charge.key, 0) - charge.estimate + amount
                )
        self._write(charge, amount, key_too=charge.key is not None)

    def _write(self, charge: Charge, amount: int, *, key_too: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._write_settle(charge, amount, key_too))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write_settle(self, charge: Charge, amount: int, key_too: bool) -> None:
        # Never retried: a settle whose reply was lost may have been applied (state/base.py).
        try:
            await self.store.settle(self.scope, charge.period, charge.entry, amount)
            if key_too:
                assert charge.key is not None
                await self.store.settle(key_scope(charge.key), charge.period, charge.entry, amount)
        except Exception as exc:
            self.outage.failed("settle a request's cost", exc, charge.request_id)
            return
        if self.outage.failing:
            self.outage.recovered()

    async def drain(self) -> None:
        """Wait for every settle written so far, then re-read the spend (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        # A refresh that read the store while a settle was on its way left a stale figure.
        await self.refresh()
