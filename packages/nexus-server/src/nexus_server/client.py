"""Talk to a running Nexus for the CLI: a small HTTP client and the tables it prints.

Imported only by the commands that need it (``nexus backends``, ``models``, ``health``, ``keys``),
so the rest of the CLI starts without httpx.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

import httpx

#: The server's admin key; sent as a bearer token on every call when set.
ADMIN_KEY_ENV = "NEXUS_ADMIN_KEY"
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
#: Adding a backend waits for the server to probe it (and detect its type).
ADD_READ_TIMEOUT = 30.0

BACKEND_STATUSES = ("healthy", "unhealthy", "loading", "unknown", "draining")
_STATUS_COLOURS = {
    "healthy": "32",  # green
    "degraded": "33",  # yellow
    "loading": "33",
    "draining": "33",
    "unhealthy": "31",  # red
    "unknown": "2",  # dim
}


class ClientError(Exception):
    """A call that failed, with the one line to print."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NexusClient:
    """Blocking JSON calls to one Nexus server, errors turned into ``ClientError``."""

    def __init__(self, url: str, admin_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            follow_redirects=False,
        )

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        """``GET path``; the JSON body."""
        return self.request("GET", path)

    def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
    ) -> Any:
        """``POST path`` with a JSON body; the JSON body of the answer."""
        return self.request("POST", path, body, read_timeout=read_timeout)

    def delete(self, path: str) -> Any:
        """``DELETE path``; the JSON body."""
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        accept_status: Iterable[int] = (),
    ) -> Any:
        """One call; the parsed JSON of a 2xx answer (or of a status in ``accept_status``)."""
        response = self._send(method, path, body, read_timeout=read_timeout)
        if response.is_success or response.status_code in set(accept_status):
            try:
                return response.json()
            except ValueError:
                raise ClientError(
                    f"{self.url}{path} answered {response.status_code} with a body that is not "
                    "JSON; is this a Nexus server?"
                ) from None
        raise ClientError(error_message(response))

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
    ) -> httpx.Response:
        """One call; the raw response, or ``ClientError`` if no answer came."""
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        if body is None and method == "POST":
            body = {}  # the admin API takes writes as JSON only
        try:
            return self._http.request(method, self.url + path, json=body, timeout=timeout)
        except httpx.ConnectError as exc:
            raise self._unreachable(_reason(exc)) from None
        except httpx.TimeoutException as exc:
            limit = CONNECT_TIMEOUT if isinstance(exc, httpx.ConnectTimeout) else read_timeout
            raise self._unreachable(f"no answer within {limit:g} s") from None
        except httpx.UnsupportedProtocol:
            raise ClientError(
                f"not an http:// or https:// URL: {self.url!r} (--url, $NEXUS_URL)"
            ) from None
        except (httpx.InvalidURL, ValueError) as exc:
            raise ClientError(f"invalid URL {self.url!r}: {exc}") from None
        except httpx.TransportError as exc:
            raise self._unreachable(_reason(exc)) from None

    def _unreachable(self, reason: str) -> ClientError:
        return ClientError(f"cannot reach Nexus at {self.url} ({reason})")


def list_data(payload: Any, what: str) -> list[dict[str, Any]]:
    """The ``data`` of a ``{"object": "list", "data": [...]}`` answer."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ClientError(f"unexpected answer to the {what} request: no list of objects in 'data'")
    return data


def object_data(payload: Any, what: str) -> dict[str, Any]:
    """A JSON object answer (anything else is a server this CLI does not understand)."""
    if not isinstance(payload, dict):
        raise ClientError(f"unexpected answer to the {what} request: not a JSON object")
    return payload


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def error_message(response: httpx.Response) -> str:
    """The message of an error answer: the OpenAI-style envelope's, else the status and body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    # Not Nexus's envelope: a proxy in between, or not a Nexus at all.
    body = " ".join(response.text.split())[:200] or response.reason_phrase
    return f"HTTP {response.status_code} from {response.request.url}: {body}"


# -- output -----------------------------------------------------------------------------------


def use_colour(stream: IO[str] | None = None) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    stream = sys.stdout if stream is None else stream
    if "NO_COLOR" in os.environ:
        return False
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, status: str, colour: bool) -> str:
    """``text`` in the colour of ``status`` (when colour is on and the status has one)."""
    code = _STATUS_COLOURS.get(status)
    if not colour or code is None:
        return text
    return f"\033[{code}m{text}\033[0m"


def print_json(data: Any) -> None:
    """The stable ``--json`` output: indented, keys in the server's order."""
    print(json.dumps(data, indent=2))


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    colour: bool = False,
    status_column: int | None = None,
) -> str:
    """Columns aligned with spaces; the status column (if any) coloured by its value."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = []
        for column, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            if index and column == status_column:
                padded = paint(cell, cell, colour) + " " * (width - len(cell))
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def backend_table(backends: Sequence[Mapping[str, Any]], *, colour: bool = False) -> str:
    """``nexus backends list``: one row per backend."""
    header = (
        "NAME",
        "TYPE",
        "STATUS",
        "ZONE",
        "TIER",
        "PRI",
        "PENDING",
        "LATENCY",
        "MODELS",
        "URL",
    )
    rows = []
    for backend in backends:
        latency = backend.get("latency_ms")
        pending = _text(backend.get("pending"))
        if backend.get("max_concurrent") is not None:
            pending = f"{pending}/{backend['max_concurrent']}"
        rows.append(
            (
                _text(backend.get("name")),
                _text(backend.get("type")),
                _text(backend.get("status")),
                _text(backend.get("zone")),
                _text(backend.get("tier")),
                _text(backend.get("priority")),
                pending,
                "-" if latency is None else f"{latency:.0f} ms",
                str(len(backend.get("models") or ())),
                _text(backend.get("url")),
            )
        )
    text = table(header, rows, colour=colour, status_column=2)
    return text + ("\n(no backends)" if not rows else "")


def capabilities(model: Mapping[str, Any]) -> str:
    """``vision,tools``: the capabilities a model has, comma-separated; ``-`` for none."""
    flags = model.get("capabilities") or {}
    # The catalogue lists them in ``nexus_core.adapters.CAPABILITIES`` order (this module
    # imports only httpx, to start fast).
    names = [name for name, present in flags.items() if present]
    return ",".join(names) or "-"


def model_table(models: Sequence[Mapping[str, Any]]) -> str:
    """``nexus models``: one row per model id (aliases say what they stand for)."""
    header = ("MODEL", "CONTEXT", "CAPABILITIES", "BACKENDS")
    rows = []
    for model in models:
        name = _text(model.get("id"))
        if model.get("alias_of"):
            name = f"{name} -> {model['alias_of']}"
        rows.append(
            (
                name,
                _text(model.get("context_length")),
                capabilities(model),
                ",".join(model.get("backends") or ()) or "-",
            )
        )
    text = table(header, rows)
    return text + ("\n(no models)" if not rows else "")


def key_table(keys: Sequence[Mapping[str, Any]]) -> str:
    """``nexus keys list``: one row per API key (never the key itself)."""
    header = ("NAME", "MODELS", "RPM", "TPM", "BUDGET", "CREATED", "SOURCE")
    rows = [
        (
            _text(key.get("name")),
            ",".join(key.get("models") or ()) or "*",
            _text(key.get("requests_per_minute")),
            _text(key.get("tokens_per_minute")),
            _money(key.get("monthly_budget_usd")),
            _when(key.get("created")),
            _text(key.get("source")),
        )
        for key in keys
    ]
    text = table(header, rows)
    return text + ("\n(no keys)" if not rows else "")


def _money(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"${value:.2f}"
    return _text(value)


def _when(value: Any) -> str:
    """A creation time: epoch seconds as UTC, a string as it came."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(value))
    return _text(value)


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: two units at most."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def health_summary(health: Mapping[str, Any], url: str, *, colour: bool = False) -> str:
    """``nexus health``: the overall status, then the backend counts and models."""
    status = _text(health.get("status"))
    uptime = health.get("uptime_seconds")
    first = f"{paint(status, status, colour)}  Nexus {_text(health.get('version'))} at {url}"
    if isinstance(uptime, int | float):
        first += f", up {duration(uptime)}"
    counts = health.get("backends") or {}
    total = counts.get("total", sum(v for v in counts.values() if isinstance(v, int)))
    parts = [f"{counts[name]} {name}" for name in BACKEND_STATUSES if counts.get(name)]
    backends = f"backends: {total}" + (f" ({', '.join(parts)})" if parts else "")
    if total == 0:  # healthy, as nothing fails, but say why nothing is served
        backends += " (none yet: nothing can be served until one is added or found)"
    return "\n".join([first, backends, f"models: {_text(health.get('models'))}"])


#: ``nexus health`` exit status by the server's overall status.
HEALTH_EXIT = {"healthy": 0, "degraded": 1, "unhealthy": 2}
#: ``nexus health`` exit status when there is no health document (no answer, an error answer).
UNHEALTHY_EXIT = HEALTH_EXIT["unhealthy"]


# -- fleet operations -------------------------------------------------------------------------

#: How often ``follow_operation`` asks how an operation is doing (seconds).
POLL_SECONDS = 0.25
#: What an operation did, for its last line.
DONE_VERBS = {"load": "loaded", "unload": "unloaded", "migrate": "moved"}


def operation_target(operation: Mapping[str, Any]) -> str:
    """``MODEL on BACKEND`` or ``MODEL from A to B``."""
    model = _text(operation.get("model"))
    if operation.get("kind") == "migrate":
        return f"{model} from {_text(operation.get('backend'))} to {_text(operation.get('target'))}"
    return f"{model} on {_text(operation.get('backend'))}"


def operation_progress(operation: Mapping[str, Any]) -> str:
    """``op_… migrate m from a to b: 50% draining the source``: one line of a running operation."""
    progress = operation.get("progress")
    share = f"{progress * 100:.0f}%" if isinstance(progress, int | float) else "-"
    step = operation.get("step") or operation.get("state") or ""
    return (
        f"{_text(operation.get('id'))} {_text(operation.get('kind'))} "
        f"{operation_target(operation)}: {share} {step}".rstrip()
    )


def follow_operation(
    nexus: NexusClient,
    operation: Mapping[str, Any],
    stream: IO[str],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the operation until it ends, writing a progress line to ``stream`` each time it
    changes (rewritten in place on a terminal); the operation as it ended."""
    current = dict(operation)
    terminal = stream.isatty()
    shown = ""
    path = f"/admin/operations/{current.get('id')}"
    while True:
        line = operation_progress(current)
        if line != shown:
            if terminal:
                stream.write("\r\x1b[2K" + line)
            else:
                stream.write(line + "\n")
            stream.flush()
            shown = line
        if current.get("state") in ("succeeded", "failed"):
            if terminal:
                stream.write("\n")
            return current
        sleep(POLL_SECONDS)
        current = object_data(nexus.get(path), "operation")


def operation_outcome(operation: Mapping[str, Any]) -> str:
    """The last line: ``loaded m on box in 2.1 s``, or ``failed: ...``."""
    started = operation.get("started_at") or operation.get("created_at")
    finished = operation.get("finished_at")
    took = ""
    if isinstance(started, int | float) and isinstance(finished, int | float):
        took = f" in {finished - started:.1f} s"
    if operation.get("state") == "succeeded":
        verb = DONE_VERBS.get(str(operation.get("kind")), "done")
        return f"{verb} {operation_target(operation)}{took}"
    step = operation.get("step")
    return (
        f"{_text(operation.get('kind'))} of {operation_target(operation)} failed"
        f"{f' while {step}' if step else ''}: {_text(operation.get('error'))}"
    )


def operation_table(operations: Sequence[Mapping[str, Any]]) -> str:
    """``nexus operations``: one row per operation, newest first."""
    header = ("ID", "KIND", "MODEL", "BACKEND", "TARGET", "STATE", "PROGRESS", "ORIGIN", "STARTED")
    rows = []
    for operation in operations:
        progress = operation.get("progress")
        state = _text(operation.get("state"))
        if state == "failed" and operation.get("error_code"):
            state = f"failed ({operation['error_code']})"
        rows.append(
            (
                _text(operation.get("id")),
                _text(operation.get("kind")),
                _text(operation.get("model")),
                _text(operation.get("backend")),
                _text(operation.get("target")),
                state,
                f"{progress * 100:.0f}%" if isinstance(progress, int | float) else "-",
                _text(operation.get("origin")),
                _when(operation.get("created_at")),
            )
        )
    text = table(header, rows)
    return text + ("\n(no operations)" if not rows else "")
