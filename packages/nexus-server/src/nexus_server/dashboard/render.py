"""All of the dashboard's HTML: the page and the fragments that keep it live.

The page is rendered here and only here. Its live regions are elements with an ``id``
(``LIVE_REGIONS``, and each backend's card) whose content is a *fragment*: the ``*_fragments``
functions each return ``{id: inner HTML}`` for a few of them, ``card`` the inside of a card;
``page`` puts them in the page, and the page's script swaps in newer ones from ``/ws`` or
``/dashboard/fragments`` (it renders nothing itself). Every value that comes from a backend or
a client goes through ``html.escape`` (``_e``), here on the server: the script inserts only
this module's markup.

The page is bounded whatever the fleet: a card lists at most ``CARD_MODELS`` models and the
matrix at most ``MATRIX_MODELS`` rows, each with a note saying how many more there are (the
snapshot from ``Dashboard.snapshot()`` carries no more than that; these limits hold for any input).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import time
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nexus_core.observability import HISTORY
from nexus_server import __version__

#: The stylesheet, inlined: the first paint need not wait for a second request (the page's CSP
#: allows exactly this text by its hash, ``STYLE_HASH``).
INLINE_CSS = (Path(__file__).resolve().parent / "static" / "dashboard.css").read_text("utf-8")
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(INLINE_CSS.encode()).digest()).decode()

#: Backend statuses with a colour of their own; anything else is drawn as ``unknown``.
STATUSES = frozenset({"unknown", "healthy", "unhealthy", "loading", "draining"})
#: Seconds between reloads of the page when JavaScript is off.
REFRESH_SECONDS = 5
#: Points drawn per chart (the last five minutes at one point per 2 s).
CHART_POINTS = 150
CHART_WIDTH = 120
CHART_HEIGHT = 28
#: A fragment set: the ``id`` of a live region of the page and its inner HTML, in page order.
Fragments = dict[str, str]
#: Shown for a missing value.
DASH = "\u2013"
#: Models listed on a backend card (the first by name): a typical box's whole list, about five
#: lines of a card; a bigger list ends with "and N more".
CARD_MODELS = 20
#: Rows of the models x backends matrix (the first models by name): as many as the request
#: history, a few screens; the full lists are in /v1/models and /admin/backends.
MATRIX_MODELS = 100


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _status(value: Any) -> str:
    return value if value in STATUSES else "unknown"


def _ms(value: Any) -> str:
    if value is None:
        return DASH
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _number(value: Any) -> str:
    if value is None:
        return DASH
    return f"{value:g}" if isinstance(value, float) else str(value)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _time(iso: Any) -> str:
    text = str(iso or "")
    return text[11:19] if len(text) >= 19 else text


@functools.cache
def _xs(count: int) -> tuple[str, ...]:
    step = CHART_WIDTH / max(1, count - 1)
    return tuple(f"{i * step:.1f}," for i in range(count))


def sparkline(values: list[float]) -> str:
    """The ``points`` of an SVG polyline drawing ``values`` (the top is their maximum)."""
    if not values:
        return ""
    scale = (CHART_HEIGHT - 2) / (max(values) or 1.0)
    bottom = CHART_HEIGHT - 1
    floor = f"{bottom:.1f}"  # most steps of most backends are idle: no formatting
    return " ".join(
        x + (f"{bottom - v * scale:.1f}" if v else floor)
        for x, v in zip(_xs(len(values)), values, strict=True)
    )


def _chart(label: str, key: str, points: list[dict[str, Any]], unit: str) -> str:
    values = [float(p.get(key) or 0) for p in points[-CHART_POINTS:]]
    peak = max(values, default=0.0)
    return (
        f'<figure class="chart chart-{key}"><figcaption>{_e(label)} peak '
        f"<b>{peak:g}{unit}</b></figcaption>"
        f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" preserveAspectRatio="none" '
        f'role="img" aria-label="{_e(label)}, last 5 minutes, peak {peak:g}{unit}">'
        f'<polyline points="{sparkline(values)}"/></svg></figure>'
    )


def card(backend: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """The inside of a backend's card (``backend``: a ``Dashboard.backend`` view; ``points``:
    its chart points, oldest first)."""
    status = _status(backend.get("status"))
    pending = _number(backend.get("pending"))
    if backend.get("max_concurrent"):
        pending += f" / {_number(backend['max_concurrent'])}"
    models = (backend.get("models") or [])[:CARD_MODELS]
    count = backend.get("model_count")
    if not isinstance(count, int):
        count = len(models)
    model_items = "".join(f"<li>{_e(model)}</li>" for model in models)
    more = count - len(models)
    error = backend.get("last_error")
    name = backend.get("name")
    ratio = backend.get("cache_hit_ratio")
    cache = (
        f"<div><dt>Cache hits</dt><dd>{ratio * 100:.0f} %</dd></div>"
        if isinstance(ratio, (int, float))
        else ""
    )
    return (
        f"<header><h3>{_e(backend.get('name'))}</h3>"
        f'<span class="pill status-{status}">{_e(status)}</span></header>'
        '<dl class="facts">'
        f"<div><dt>Type</dt><dd>{_e(backend.get('type'))}</dd></div>"
        f"<div><dt>Zone</dt><dd>{_e(backend.get('zone'))}</dd></div>"
        f"<div><dt>Latency</dt><dd>{_ms(backend.get('latency_ms'))}</dd></div>"
        f"<div><dt>Pending</dt><dd>{_e(pending)}</dd></div>"
        + cache
        + "</dl>"
        + (f'<p class="error">{_e(error)}</p>' if error else "")
        + '<div class="charts">'
        + _chart("req/s", "rps", points, "")
        + _chart("p95", "p95_ms", points, " ms")
        + _chart("errors", "errors", points, "")
        + "</div>"
        f'<p class="models-title">{_count(count)} model{"" if count == 1 else "s"}</p>'
        f'<ul class="models">{model_items}</ul>'
        + (f'<p class="more">and {_count(more)} more</p>' if more > 0 else "")
        + _card_controls(name, status)
    )


def _action(
    path: str,
    label: str,
    target: Any,
    *,
    danger: bool = False,
    field: tuple[str, Any] | None = None,
) -> str:
    """A button submitting the operator's action form (``ACTION_FORM``) to ``path``, with
    ``field`` (name, value) if given: inert on a page without that form (a reader's)."""
    style = ' class="danger"' if danger else ""
    value = f' name="{field[0]}" value="{_e(field[1])}"' if field is not None else ""
    return (
        f'<button type="submit" form="{ACTION_FORM}" formaction="{_e(path)}"{value}{style}>'
        f'{label}<span class="visually-hidden"> {_e(target)}</span></button>'
    )


def _card_controls(name: Any, status: str) -> str:
    """Drain or resume, and remove: the operator's controls of a backend's card."""
    base = "/dashboard/backends/" + quote(str(name), safe="")
    toggle = (
        _action(base + "/resume", "Resume", name)
        if status == "draining"
        else _action(base + "/drain", "Drain", name)
    )
    return (
        f'<div class="controls">{toggle}'
        f"{_action(base + '/remove', 'Remove', name, danger=True)}</div>"
    )


def _matrix(backends: list[dict[str, Any]], matrix: dict[str, Any]) -> str:
    rows = (matrix.get("rows") or [])[:MATRIX_MODELS]
    if not rows or not backends:
        return '<p class="empty">No models yet.</p>'
    total = matrix.get("model_count")
    if not isinstance(total, int):
        total = len(rows)
    names = [b.get("name") for b in backends]
    head = "".join(f'<th scope="col">{_e(name)}</th>' for name in names)
    # One cell per backend that serves a model without a known lifecycle state, drawn once: a
    # row costs a set and a lookup per column; cells with a state carry the model's controls.
    statuses: dict[Any, str] = {}
    served: dict[Any, str] = {}
    for backend in backends:
        status = _status(backend.get("status"))
        statuses[backend.get("name")] = status
        served[backend.get("name")] = (
            f'<td class="cell status-{status}"><span aria-hidden="true">●</span>'
            f'<span class="visually-hidden">{status}</span></td>'
        )
    lines = []
    for row in rows:
        serving = set(row.get("backends") or ())
        states = row.get("states") or {}
        model = row.get("model")
        cells = "".join(
            (
                _model_cell(name, statuses[name], model, states[name])
                if name in states
                else served[name]
            )
            if name in serving
            else '<td class="cell"></td>'
            for name in names
        )
        lines.append(f'<tr><th scope="row">{_e(model)}</th>{cells}</tr>')
    note = ""
    if total > len(rows):
        note = (
            f'<p class="more">The first {_count(len(rows))} of {_count(total)} models, by name; '
            'all of them in <a href="/v1/models">/v1/models</a> and '
            '<a href="/admin/backends">/admin/backends</a>.</p>'
        )
    return (
        f'{note}<table class="matrix"><thead><tr><th scope="col">Model</th>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table>"
    )


#: A model's lifecycle states on a backend (``nexus_core.adapters.ModelState``), with the mark
#: drawn for each; anything else is drawn as ``unknown``.
MODEL_STATES = {
    "loaded": "●",
    "loading": "◐",
    "unloaded": "○",
    "sleeping": "○",
    "downloading": "◐",
}
#: The states in which a model can be loaded from the matrix, and unloaded.
LOADABLE = frozenset({"unloaded", "sleeping"})
UNLOADABLE = frozenset({"loaded"})


def _model_cell(backend: Any, status: str, model: Any, state: Any) -> str:
    """A matrix cell of a backend whose server reports ``model``'s lifecycle ``state``: the
    state, and the operator's load or unload button."""
    state = state if state in MODEL_STATES else "unknown"
    base = "/dashboard/backends/" + quote(str(backend), safe="")
    target = f"{model} on {backend}"
    if state in LOADABLE:
        control = _action(base + "/load", "Load", target, field=("model", model))
    elif state in UNLOADABLE:
        control = _action(base + "/unload", "Unload", target, field=("model", model))
    else:
        control = ""
    controls = f'<span class="controls">{control}</span>' if control else ""
    return (
        f'<td class="cell status-{status} model-{state}" title="{state}">'
        f'<span aria-hidden="true">{MODEL_STATES.get(state, "?")}</span>'
        f'<span class="visually-hidden">{status}, {state}</span>{controls}</td>'
    )


OPERATION_COLUMNS = ("Started", "Operation", "Model", "Backend", "State", "Step", "Error")
#: Operation states with a colour of their own (``nexus_core.fleet.OperationState``).
OPERATION_STATES = {
    "pending": "loading",
    "running": "loading",
    "succeeded": "healthy",
    "failed": "unhealthy",
}


def operations_fragments(operations: list[dict[str, Any]]) -> Fragments:
    """The operations panel (``operations``: ``Operation.snapshot()``s, newest first) and how
    many are running."""
    running = sum(1 for op in operations if op.get("state") in ("pending", "running"))
    if not operations:
        return {"operation-count": "0", "operations": '<p class="empty">No operations yet.</p>'}
    head = "".join(f'<th scope="col">{name}</th>' for name in OPERATION_COLUMNS)
    rows = []
    for op in operations:
        state = str(op.get("state"))
        colour = OPERATION_STATES.get(state, "unknown")
        where = _e(op.get("backend"))
        if op.get("target"):
            where += f" → {_e(op.get('target'))}"
        created = op.get("created_at")
        started = (
            datetime.fromtimestamp(created, UTC).strftime("%H:%M:%S")
            if isinstance(created, (int, float))
            else DASH
        )
        progress = op.get("progress")
        step = _e(op.get("step") or DASH)
        if isinstance(progress, (int, float)) and state in ("pending", "running"):
            step += f" ({progress:.0%})"
        rows.append(
            f'<tr data-operation="{_e(op.get("id"))}"><td>{started}</td>'
            f"<td>{_e(op.get('kind'))}</td><td>{_e(op.get('model'))}</td><td>{where}</td>"
            f'<td><span class="pill status-{colour}">{_e(state)}</span></td>'
            f"<td>{step}</td><td>{_e(op.get('error') or '')}</td></tr>"
        )
    return {
        "operation-count": str(running),
        "operations": f'<table class="operations"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>",
    }


HISTORY_COLUMNS = ("Time", "Model", "Backend", "Status", "Duration", "Tokens", "Error")


def history_row(entry: dict[str, Any], fresh: bool = False) -> str:
    """One row of the last requests (``entry``: a ``/v1/history`` entry; a ``fresh`` one
    flashes once)."""
    status = entry.get("status") or 0
    tokens = ""
    if entry.get("prompt_tokens") is not None or entry.get("completion_tokens") is not None:
        tokens = f"{entry.get('prompt_tokens') or 0}/{entry.get('completion_tokens') or 0}"
    failed = status >= 400 or entry.get("error")
    stamp = entry.get("time")
    model = entry.get("model")
    return (
        f'<tr class="{"failed" if failed else "ok"}{" new" if fresh else ""}" '
        f'data-request-id="{_e(entry.get("request_id") or "")}">'
        f'<td><time datetime="{_e(stamp)}">{_e(_time(stamp))}</time></td>'
        f"<td>{_e(DASH if model is None else model)}</td>"
        f"<td>{_e(entry.get('backend') or DASH)}</td>"
        f"<td>{_e(status)}</td><td>{_ms(entry.get('duration_ms'))}</td>"
        f"<td>{_e(tokens)}</td><td>{_e(entry.get('error') or '')}</td></tr>"
    )


def _widgets(stats: dict[str, Any]) -> str:
    requests = stats.get("requests") or {}
    budget = stats.get("budget")
    queue = stats.get("queue")
    if budget:
        limit = budget.get("limit_usd")
        spent = f"${budget.get('spent_usd', 0):.4f}"
        budget_text = f"{spent} of ${limit:g}" if limit is not None else f"{spent} (no limit)"
        budget_note = f"{budget.get('status')} · {budget.get('period')}"
    else:
        budget_text, budget_note = DASH, "not configured"
    if queue and queue.get("enabled"):
        queue_text = f"{queue.get('depth')} / {queue.get('max_size')}"
        queue_note = f"max wait {queue.get('max_wait_seconds'):g} s"
    else:
        queue_text, queue_note = "off", "requests are not queued"
    widgets = (
        (
            "requests",
            "Requests",
            str(requests.get("total", 0)),
            f"{requests.get('errors', 0)} errors",
        ),
        ("budget", "Budget", budget_text, budget_note),
        ("queue", "Queue", queue_text, queue_note),
    )
    return "".join(
        f'<div class="widget" id="widget-{key}"><h3>{title}</h3>'
        f'<p class="value">{_e(value)}</p><p class="note">{_e(note)}</p></div>'
        for key, title, value, note in widgets
    )


def health_fragments(health: dict[str, Any]) -> Fragments:
    """The overall health pill (``health``: ``Gateway.health_summary()``)."""
    overall = health.get("status", "unknown")
    overall_class = {"healthy": "healthy", "degraded": "loading"}.get(overall, "unhealthy")
    return {"health": f'<span class="pill status-{overall_class}">{_e(overall)}</span>'}


def widget_fragments(stats: dict[str, Any]) -> Fragments:
    """The summary widgets (``stats``: ``Monitor.summary()``)."""
    return {"widgets": _widgets(stats)}


#: A card on the page: the ``id`` of its element (its fragment), the backend's name, its inside.
Card = tuple[str, Any, str]


def backend_fragments(cards: list[Card]) -> Fragments:
    """The backends' cards, each in an element whose ``id`` lets its inside be swapped alone."""
    html = "".join(
        f'<article class="card" id="{slot}" data-backend="{_e(name)}">{inside}</article>'
        for slot, name, inside in cards
    )
    return {
        "backend-count": str(len(cards)),
        "backends": html or '<p class="empty">No backends configured.</p>',
    }


def matrix_fragments(backends: list[dict[str, Any]], matrix: dict[str, Any]) -> Fragments:
    """The models x backends matrix (``matrix``: ``Dashboard.matrix()``) and its model count."""
    return {
        "model-count": _count(matrix.get("model_count", 0)),
        "matrix": _matrix(backends, matrix),
    }


def history_fragments(rows: list[str]) -> Fragments:
    """The table of the last requests (``rows``: ``history_row``s, newest first)."""
    head = "".join(f'<th scope="col">{name}</th>' for name in HISTORY_COLUMNS)
    return {
        "request-count": str(len(rows)),
        "history": f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>",
    }


def new_history_fragments(rows: list[str], count: int) -> Fragments:
    """The rows to put on top of the table (it keeps its last ``HISTORY``), and the count."""
    return {"request-count": str(count), "history-rows": "".join(rows)}


def snapshot_fragments(snapshot: dict[str, Any]) -> Fragments:
    """Every fragment of the page for ``snapshot`` (``Dashboard.snapshot()``)."""
    backends = snapshot.get("backends") or []
    series = snapshot.get("series") or {}
    cards = [
        (f"card-{index}", b.get("name"), card(b, series.get(b.get("name"), [])))
        for index, b in enumerate(backends)
    ]
    return {
        **health_fragments(snapshot.get("health") or {}),
        **widget_fragments(snapshot.get("stats") or {}),
        **backend_fragments(cards),
        **matrix_fragments(backends, snapshot.get("matrix") or {}),
        **operations_fragments(snapshot.get("operations") or []),
        **history_fragments([history_row(entry) for entry in snapshot.get("history") or []]),
    }


def page(
    fragments: Fragments, now: float | None = None, *, viewer: str = "", operator: bool = False
) -> str:
    """The whole page with ``fragments`` in its live regions, as rendered at ``now``.

    ``viewer`` is the part of the page that is this viewer's own (``manage_section`` for an
    operator, ``sign_in_form`` for a reader who could sign in); an ``operator``'s page shows
    the controls.
    """
    stamp = datetime.fromtimestamp(now or time.time(), UTC)
    f = {key: fragments.get(key, "") for key in LIVE_REGIONS}
    body = '<body class="operator">' if operator else "<body>"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Nexus dashboard</title>
<style>{INLINE_CSS}</style>
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>
<script src="/dashboard/static/dashboard.js" defer></script>
</head>
{body}
<a class="skip" href="#requests">Skip to recent requests</a>
<header class="top">
<h1>Nexus</h1>
<span id="health">{f["health"]}</span>
<span id="connection" class="connection" role="status" aria-live="polite">snapshot
 <time datetime="{stamp.isoformat(timespec="seconds")}">{stamp:%H:%M:%S} UTC</time>,
 refreshed every {REFRESH_SECONDS} s</span>
</header>
<main>
{viewer}
<section aria-labelledby="summary-title">
<h2 id="summary-title" class="visually-hidden">Summary</h2>
<div id="widgets" class="widgets">{f["widgets"]}</div>
</section>
<section aria-labelledby="backends-title">
<h2 id="backends-title">Backends
<span id="backend-count" class="count">{f["backend-count"]}</span></h2>
<div id="backends" class="cards">{f["backends"]}</div>
</section>
<section aria-labelledby="models-title">
<h2 id="models-title">Models &#215; backends
<span id="model-count" class="count">{f["model-count"]}</span></h2>
<div id="matrix" class="scroll" tabindex="0" role="region" aria-labelledby="models-title">
{f["matrix"]}</div>
</section>
<section aria-labelledby="operations-title">
<h2 id="operations-title">Operations
<span id="operation-count" class="count" title="running">{f["operation-count"]}</span></h2>
<div id="operations" class="scroll" tabindex="0" role="region"
 aria-labelledby="operations-title">{f["operations"]}</div>
</section>
<section id="requests" aria-labelledby="requests-title">
<h2 id="requests-title">Last requests
<span id="request-count" class="count">{f["request-count"]}</span></h2>
<div class="scroll" tabindex="0" role="region" aria-labelledby="requests-title">
<table id="history" class="history" data-keep="{HISTORY}">{f["history"]}</table>
</div>
</section>
</main>
<footer>Nexus {_e(__version__)} · <a href="/v1/stats">/v1/stats</a> ·
<a href="/v1/history">/v1/history</a> · <a href="/metrics">/metrics</a> ·
<a href="/dashboard/snapshot">snapshot JSON</a></footer>
</body>
</html>
"""


#: The ``id`` of the operator's action form: the controls in the cards and the matrix submit it
#: (``form`` and ``formaction`` attributes), so that the shared fragments carry no token.
ACTION_FORM = "act"


def _csrf(token: str, back: str = "/") -> str:
    hidden = f'<input type="hidden" name="csrf" value="{_e(token)}">'
    if back != "/":
        hidden += f'<input type="hidden" name="back" value="{_e(back)}">'
    return hidden


def _notice(notice: str | None, failed: bool) -> str:
    if not notice:
        return ""
    kind = "notice failed" if failed else "notice"
    return f'<p class="{kind}" role="status">{_e(notice)}</p>'


#: Where a write sends the browser back to (the form's ``back`` field): the page, or the page of
#: forms that does not reload itself.
PAGES = ("/", "/dashboard/manage")


def manage_section(
    csrf: str,
    *,
    signed_in: bool,
    types: list[str],
    notice: str | None = None,
    failed: bool = False,
    back: str = "/",
    backends: list[str] | None = None,
    models: list[str] | None = None,
) -> str:
    """An operator's own part of the page: the action form (its CSRF token), the forms to add a
    backend, and to sign out (``signed_in``: by the admin key, not by the loopback rule).

    ``back``: the page the forms come back to (``PAGES``). Without JavaScript the dashboard
    reloads every few seconds, which would empty a form being filled: it links to
    ``/dashboard/manage``, the same forms on a page that does not reload.
    """
    options = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in ["auto", *types])
    who = "signed in with the admin key" if signed_in else "on this machine (no admin key set)"
    sign_out = (
        '<form method="post" action="/dashboard/sign-out">'
        f'{_csrf(csrf)}<button type="submit">Sign out</button></form>'
        if signed_in
        else ""
    )
    hidden = _csrf(csrf, back)
    still = (
        '<noscript><p class="more">Without JavaScript this page reloads every '
        f'{REFRESH_SECONDS} s: fill the forms on <a href="/dashboard/manage">a page that '
        "does not</a>.</p></noscript>"
        if back == "/"
        else ""
    )
    return (
        '<section id="manage" class="manage" aria-labelledby="manage-title">'
        f'<h2 id="manage-title">Manage <span class="count">{who}</span></h2>'
        f"{_notice(notice, failed)}{still}"
        f'<form id="{ACTION_FORM}" method="post" action="/dashboard/backends">'
        f"{hidden}</form>"
        '<form id="add-backend" method="post" action="/dashboard/backends">'
        f"{hidden}"
        '<label>Name <input name="name" placeholder="from the URL" maxlength="64"></label>'
        '<label>URL <input name="url" type="url" required '
        'placeholder="http://192.168.1.20:11434"></label>'
        f'<label>Type <select name="type">{options}</select></label>'
        '<button type="submit">Add backend</button></form>'
        f"{_migrate_form(hidden, backends or [], models or [])}"
        f"{sign_out}</section>"
    )


def _migrate_form(hidden: str, backends: list[str], models: list[str]) -> str:
    """The form moving a model from one backend to another (``models``: suggestions, the
    matrix's; any model id may be typed)."""
    choices = "".join(f'<option value="{_e(name)}">{_e(name)}</option>' for name in backends)
    # "To" starts on the second backend: a migration is never to its own source.
    targets = "".join(
        f'<option value="{_e(name)}"{" selected" if index == 1 else ""}>{_e(name)}</option>'
        for index, name in enumerate(backends)
    )
    suggestions = "".join(f'<option value="{_e(model)}">' for model in models)
    return (
        '<form id="migrate" method="post" action="/dashboard/models/migrate">'
        f"{hidden}"
        '<label>Model <input name="model" list="model-names" required></label>'
        f'<datalist id="model-names">{suggestions}</datalist>'
        f'<label>From <select name="from">{choices}</select></label>'
        f'<label>To <select name="to">{targets}</select></label>'
        '<button type="submit">Migrate</button></form>'
    )


def sign_in_form(notice: str | None = None) -> str:
    """The form a reader signs in with (shown when an admin key is configured)."""
    return (
        '<section class="sign-in-section" aria-label="Sign in">'
        f"{_notice(notice, True)}"
        '<form class="sign-in" method="post" action="/dashboard/sign-in">'
        '<label for="admin-key">Admin key</label>'
        '<input id="admin-key" name="key" type="password" autocomplete="off" required>'
        '<button type="submit">Sign in to manage</button></form></section>'
    )


def sign_in_page(message: str) -> str:
    """A page of its own with ``message`` and the sign-in form (a refused sign-in, a dashboard
    that shows only to the admin key)."""
    return plain_page("Nexus: sign in", f"<p>{_e(message)}</p>{sign_in_form()}")


def plain_page(title: str, inside: str) -> str:
    """A page of the dashboard's style that is not live (no script, no reload)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{_e(title)}</title>
<style>{INLINE_CSS}</style>
</head>
<body class="operator">
<header class="top"><h1>Nexus</h1></header>
<main>
{inside}
<p><a href="/">Back to the dashboard</a></p>
</main>
</body>
</html>
"""


#: The ids of the page's live regions, in page order: every fragment set fills some of them.
LIVE_REGIONS = (
    "health",
    "widgets",
    "backend-count",
    "backends",
    "model-count",
    "matrix",
    "operation-count",
    "operations",
    "request-count",
    "history",
)


def render_page(snapshot: dict[str, Any]) -> str:
    """The whole page for ``snapshot`` (``Dashboard.snapshot()``)."""
    return page(snapshot_fragments(snapshot), snapshot.get("time"))
