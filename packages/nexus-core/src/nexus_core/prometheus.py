"""Read the Prometheus text format that inference servers serve on ``/metrics``.

Only what load signals need: the samples of a few named metrics, each with its labels, so an
adapter can sum a gauge over label sets (vLLM reports one per engine) or take the largest.
Comment lines (``# HELP``, ``# TYPE``), blank lines, lines that do not parse and values that are
not finite (``NaN``, ``+Inf``) are skipped: a load reading is advice, never a reason to fail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence

#: One sample: its labels and its value.
Sample = tuple[dict[str, str], float]

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPE = re.compile(r"\\[\\\"n]")


def parse(text: str, names: Collection[str] | None = None) -> dict[str, list[Sample]]:
    """The samples of every metric in ``text`` (of ``names`` only, when given), by name."""
    samples: dict[str, list[Sample]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            if names is not None and name not in names:
                continue
            parsed = _labels(line, brace + 1)
            if parsed is None:
                continue
            labels, rest = parsed
        elif space != -1:
            name, labels, rest = line[:space], {}, line[space:]
            if names is not None and name not in names:
                continue
        else:
            continue
        value = _value(rest)
        if value is not None:
            samples.setdefault(name, []).append((labels, value))
    return samples


def total(samples: Mapping[str, Sequence[Sample]], name: str) -> float | None:
    """The sum of a metric over all its label sets; None when the metric is absent."""
    found = samples.get(name)
    return sum(value for _, value in found) if found else None


def highest(samples: Mapping[str, Sequence[Sample]], name: str) -> float | None:
    """The largest value of a metric over its label sets; None when the metric is absent."""
    found = samples.get(name)
    return max(value for _, value in found) if found else None


def _labels(line: str, start: int) -> tuple[dict[str, str], str] | None:
    labels: dict[str, str] = {}
    position = start
    while True:
        while position < len(line) and line[position] == " ":
            position += 1
        if position < len(line) and line[position] == "}":
            return labels, line[position + 1 :]
        match = _LABEL.match(line, position)
        if match is None:
            return None
        labels[match.group(1)] = _ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], match.group(2))
        position = match.end()
        if not match.group(3):
            # Without a comma the label set must close here.
            while position < len(line) and line[position] == " ":
                position += 1
            if position >= len(line) or line[position] != "}":
                return None
            return labels, line[position + 1 :]


def _value(rest: str) -> float | None:
    fields = rest.split()
    if not fields or len(fields) > 2:  # the value, and maybe a timestamp
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return value if math.isfinite(value) else None
