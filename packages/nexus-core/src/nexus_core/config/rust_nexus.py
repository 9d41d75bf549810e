"""Keys of the Rust Nexus (github.com/leocamello/nexus) that this one names differently or
lacks: each is read under its new name or dropped, with a warning, so the Rust Nexus's files load
unchanged; any other unknown key is still an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nexus_core.config.keys import format_key_path


@dataclass(frozen=True)
class UpstreamKey:
    """A key of the Rust Nexus's configuration that this one names differently, or lacks.

    ``path`` is written as in this reference (``backends[].backend_type``). ``replacement`` is the
    key of the same table read instead; ``None``: the key has no effect here and is dropped.
    ``note`` says why, or what to use instead.
    """

    path: str
    replacement: str | None
    note: str = ""


#: Keys from the Rust Nexus's documentation, example file and end-to-end script. Each is read
#: (renamed) or dropped with one warning naming both, so its files load unchanged; any other
#: unknown key is still an error. A whole section is one entry (``lifecycle``).
UPSTREAM_KEYS: tuple[UpstreamKey, ...] = (
    UpstreamKey("quality.ttft_threshold_ms", "ttft_penalty_threshold_ms"),
    UpstreamKey("quality.window_1h", "window_seconds"),
    UpstreamKey("queue.default_timeout_seconds", "max_wait_seconds"),
    UpstreamKey("queue.max_queue_size", "max_size"),
    UpstreamKey("routing.budget.monthly_limit", "monthly_limit_usd"),
    UpstreamKey("backends[].backend_type", "type"),
    UpstreamKey("backends[].privacy", "zone"),
    UpstreamKey(
        "server.max_concurrent_requests",
        None,
        "limit a backend with backends[].max_concurrent, client connections with "
        "server.max_connections",
    ),
    UpstreamKey("quality.enabled", None, "quality tracking is always on"),
    UpstreamKey("quality.window_24h", None, "there is one window, quality.window_seconds"),
    UpstreamKey("quality.update_interval", None, "quality is updated by every request"),
    UpstreamKey("quality.metrics_interval_seconds", None, "quality is updated by every request"),
    UpstreamKey("queue.priority_header", None, "the header is always X-Nexus-Priority"),
    UpstreamKey(
        "routing.budget.reconciliation_interval_secs",
        None,
        "spend is recorded as each answer ends",
    ),
    UpstreamKey("routing.policies[].max_cost_per_request", None, "use routing.budget"),
    UpstreamKey("routing.policies[].fallback_allowed", None, "fallbacks follow routing.fallbacks"),
    UpstreamKey("lifecycle", None, "there is no model lifecycle API"),
    # [fleet] is a section here too (docs/fleet.md); the Rust Nexus's pre-warming keys are not.
    UpstreamKey("fleet.enabled", None, "there is no pre-warming yet"),
    UpstreamKey("fleet.min_sample_days", None, "there is no pre-warming yet"),
)


@dataclass
class UpstreamReading:
    """What ``read_upstream_keys`` found: warning and error lines, origins of renamed keys."""

    warnings: list[str]
    errors: list[str]
    origins: dict[tuple[str, ...], str]


def read_upstream_keys(
    data: Mapping[str, Any], source: str = "config"
) -> tuple[dict[str, Any], UpstreamReading]:
    """``data`` with the Rust Nexus's keys renamed or dropped (``UPSTREAM_KEYS``), and the lines
    to report: a warning per key, an error when a key is set under both names.

    ``data`` itself is left alone; tables are copied only where a key moves.
    """
    out = dict(data)
    found = UpstreamReading([], [], {})
    for entry in UPSTREAM_KEYS:
        *parents, key = entry.path.split(".")
        for table, loc in _upstream_tables(out, parents, ()):
            if key not in table:
                continue
            old = format_key_path((*loc, key))
            value = table.pop(key)
            if entry.replacement is None:
                kind = "key" if "." in entry.path else "section"
                found.warnings.append(
                    f"{source}: {old}: a Rust Nexus {kind} with no effect here ({entry.note}); "
                    "ignored, remove it"
                )
                continue
            new = format_key_path((*loc, entry.replacement))
            if entry.replacement in table:
                found.errors.append(
                    f"{source}: {old}: the Rust Nexus's name of {new}, which is set too; "
                    f"keep only {new}"
                )
                continue
            table[entry.replacement] = value
            found.origins[tuple(str(part) for part in (*loc, entry.replacement))] = (
                f"{source} ({old})"
            )
            found.warnings.append(
                f"{source}: {old} is deprecated (the Rust Nexus's name): read as {new}; rename it"
            )
    routing = out.get("routing")
    if isinstance(routing, dict) and isinstance(routing.get("policies"), dict):
        # [routing.policies.<name>] is in some of the Rust Nexus's documents; it never read it.
        found.errors.append(
            f"{source}: routing.policies: must be an array of tables: write each policy as "
            '[[routing.policies]] with model_pattern = "<glob>" (a [routing.policies.<name>] '
            "table is not a policy, in the Rust Nexus either)"
        )
        out["routing"] = {k: v for k, v in routing.items() if k != "policies"}
    return out, found


def _upstream_tables(
    node: dict[str, Any], parents: list[str], loc: tuple[str | int, ...]
) -> Iterator[tuple[dict[str, Any], tuple[str | int, ...]]]:
    """The tables at ``parents`` below ``node`` (``name[]``: each table of that array), each a
    copy put in place of the original, with its key path."""
    if not parents:
        yield node, loc
        return
    head, rest = parents[0], parents[1:]
    if head.endswith("[]"):
        name = head[:-2]
        items = node.get(name)
        if not isinstance(items, list):
            return
        items = node[name] = list(items)
        for index, item in enumerate(items):
            if isinstance(item, dict):
                items[index] = dict(item)
                yield from _upstream_tables(items[index], rest, (*loc, name, index))
        return
    child = node.get(head)
    if isinstance(child, dict):
        node[head] = dict(child)
        yield from _upstream_tables(node[head], rest, (*loc, head))
