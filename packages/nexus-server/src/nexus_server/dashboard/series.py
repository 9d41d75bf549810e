"""Per-backend time series for the dashboard's charts: requests/s, p95 latency, errors.

One point per ``STEP`` seconds, ``POINTS`` points per backend (ten minutes). Adding a request is
O(1): it bumps the counters of the current step; the p95 of a step is computed when the step is
read, off the request path.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

#: Seconds per point.
STEP = 2
#: Points kept per backend (10 minutes).
POINTS = 300
#: Durations kept per step for its p95; beyond that a step's p95 is of its first requests.
SAMPLES_PER_STEP = 512


class _Step:
    __slots__ = ("durations", "errors", "index", "requests")

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests = 0
        self.errors = 0
        self.durations: list[float] = []

    def point(self) -> dict[str, Any]:
        return _point(self.index, self.requests, self.errors, self.durations)


def _point(index: int, requests: int, errors: int, durations: list[float]) -> dict[str, Any]:
    p95 = None
    if durations:
        ordered = sorted(durations)
        p95 = round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] * 1000, 3)
    return {
        "t": index * STEP,
        "rps": round(requests / STEP, 3),
        "p95_ms": p95,
        "errors": errors,
    }


class Series:
    """The last ``POINTS`` steps of every backend that served a request."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._steps: dict[str, deque[_Step]] = {}

    def now_index(self) -> int:
        """The index of the step in progress."""
        return int(self.clock() // STEP)

    def add(self, backend: str, duration: float, failed: bool) -> None:
        """Count one finished request on ``backend``."""
        index = self.now_index()
        steps = self._steps.get(backend)
        if steps is None:
            steps = self._steps[backend] = deque(maxlen=POINTS + 1)
        if not steps or steps[-1].index != index:
            steps.append(_Step(index))
        step = steps[-1]
        step.requests += 1
        if failed:
            step.errors += 1
        if len(step.durations) < SAMPLES_PER_STEP:
            step.durations.append(duration)

    def active_since(self, backend: str, index: int) -> bool:
        """Whether ``backend`` served a request in step ``index`` or later."""
        steps = self._steps.get(backend)
        return steps is not None and len(steps) > 0 and steps[-1].index >= index

    def forget(self, backend: str) -> None:
        """Drop a removed backend's points."""
        self._steps.pop(backend, None)

    def points(self, backend: str, count: int = POINTS) -> list[dict[str, Any]]:
        """The last ``count`` complete steps of ``backend``, oldest first, zeros where idle."""
        end = self.now_index()  # the step in progress is not complete: left out
        start = end - count
        by_index = {step.index: step for step in self._steps.get(backend, ())}
        out = []
        for index in range(start, end):
            step = by_index.get(index)
            out.append(step.point() if step is not None else _point(index, 0, 0, []))
        return out

    def last_point(self, backend: str) -> dict[str, Any]:
        """The step completed last of ``backend``."""
        return self.points(backend, 1)[0]
