"""The ``nexus`` command line (cyclopts).

Only cyclopts is imported up front: the configuration, the plugin host and the server are imported
inside the commands that need them, so ``nexus --version`` and shell completion stay fast.
Commands return their exit code; anything printed as an error goes to standard error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cyclopts import App, Parameter

from nexus_server import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from nexus_core.config import NexusConfig
    from nexus_core.plugins import PluginInfo
    from nexus_server.client import NexusClient

app = App(
    name="nexus",
    version=__version__,
    help="Nexus: one OpenAI-compatible endpoint in front of your LLM inference servers.",
    # Flags are opt-in switches (--force, --no-discovery); no generated --no-force twins.
    default_parameter=Parameter(negative=()),
)
config_app = App(name="config", help="Write and check configuration files.")
app.command(config_app)
backends_app = App(
    name="backends", help="List, add, remove and drain the backends of a running Nexus."
)
app.command(backends_app)
keys_app = App(name="keys", help="Create, list and revoke the API keys of a running Nexus.")
app.command(keys_app)
models_app = App(
    name="models",
    help="List the models of a running Nexus; load, unload and move them across backends.",
)
app.command(models_app)

DEFAULT_URL = "http://localhost:8000"
#: ``--url``: the Nexus to talk to; $NEXUS_URL when the flag is not given.
ServerUrl = Annotated[str, Parameter(name="--url", env_var="NEXUS_URL")]
JsonFlag = Annotated[bool, Parameter(name="--json")]
BackendStatusName = Literal["healthy", "unhealthy", "loading", "unknown", "draining"]


def _error(line: str) -> None:
    print(line, file=sys.stderr)


@app.command
def serve(
    *,
    # The short flags are the Rust Nexus's, so its scripts run unchanged.
    config: Annotated[Path | None, Parameter(name=["--config", "-c"])] = None,
    host: Annotated[str | None, Parameter(name=["--host", "-H"])] = None,
    port: Annotated[int | None, Parameter(name=["--port", "-p"])] = None,
    log_level: Annotated[str | None, Parameter(name=["--log-level", "-l"])] = None,
    no_discovery: bool = False,
    no_health_check: bool = False,
    workers: int | None = None,
) -> int:
    """Run the gateway: the OpenAI-compatible API and its health endpoints, on one port.

    With no configuration file and no flags it works: discovery is on and a local Ollama
    (http://localhost:11434) is picked up if it answers.

    Parameters
    ----------
    config
        Configuration file (default: $NEXUS_CONFIG, else ./nexus.toml if present).
    host
        Address to listen on (server.host; default 0.0.0.0).
    port
        Port to listen on (server.port; default 8000).
    log_level
        debug, info, warning or error (logging.level; trace and warn are read as debug and
        warning).
    no_discovery
        Do not browse the local network over mDNS (discovery.enabled = false).
    no_health_check
        Do not probe backends in the background (health_check.enabled = false).
    workers
        Processes serving the port (server.workers; default 1); more need [state] sqlite or
        redis.
    """
    from nexus_core.config import ConfigError, load_config

    overrides = {
        "server.host": host,
        "server.port": port,
        "server.workers": workers,
        "logging.level": log_level,
        "discovery.enabled": False if no_discovery else None,
        "health_check.enabled": False if no_health_check else None,
    }
    try:
        effective = load_config(config, overrides=overrides)
    except ConfigError as exc:
        for line in exc.errors:
            _error(line)
        return 1
    from nexus_core.config import find_config_file
    from nexus_server.serve import run

    # run() checks the backends against the plugins (after setting up logging, since loading
    # them may log), as `nexus config check` does.
    return run(effective, source=_source_name(config), config_file=find_config_file(config))


@config_app.command
def init(
    *,
    output: Annotated[Path, Parameter(name=["--output", "-o"], allow_leading_hyphen=True)] = Path(
        "nexus.toml"
    ),
    force: Annotated[bool, Parameter(name=["--force", "-f"])] = False,
    minimal: bool = False,
) -> int:
    """Write a commented example configuration that `nexus config check` accepts.

    Parameters
    ----------
    output
        File to write; "-" prints to standard output.
    force
        Overwrite the file if it exists.
    minimal
        Only the keys people change first (default: every key with its default and a comment).
    """
    from nexus_core.config.example import example_config

    text = example_config(minimal)
    if str(output) == "-":
        sys.stdout.write(text)
        return 0
    if output.exists() and not force:
        _error(f"{output} already exists; pass --force to overwrite it")
        return 1
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _error(f"{output}: cannot write: {exc.strerror}")
        return 1
    print(f"wrote {output}; check it with: nexus config check {output}")
    return 0


@config_app.command
def check(
    file: Path | None = None,
    *,
    output_format: Annotated[Literal["toml", "json"], Parameter(name="--format")] = "toml",
) -> int:
    """Validate a configuration and print the effective result (environment applied).

    Exit status 1, with one line per problem on standard error, when it is not valid. Secrets
    are never printed: the configuration only names the environment variables holding them.

    Parameters
    ----------
    file
        Configuration file (default: $NEXUS_CONFIG, else ./nexus.toml if present, else defaults).
    output_format
        How to print the effective configuration.
    """
    from nexus_core.config import ConfigError, load_config, mask_secrets

    try:
        config = load_config(file)
    except ConfigError as exc:
        for line in exc.errors:
            _error(line)
        return 1
    from nexus_core.plugins import config_problems

    source = _source_name(file)
    problems = config_problems(config, source)
    if problems:
        for line in problems:
            _error(line)
        return 1
    data = mask_secrets(config)
    if output_format == "json":
        print(json.dumps(data, indent=2))
    else:
        from nexus_core.config.toml_writer import to_toml

        print(f"# effective configuration: {source}, environment (NEXUS_*) applied")
        print(f"# {_state_line(config, file)}")
        for line in _secret_lines(config):
            print(f"# {line}")
        print()
        sys.stdout.write(to_toml(data))
    for line in config.deprecation_warnings:
        _error(f"warning: {line}")
    for line in _secret_lines(config, missing_only=True):
        _error(f"warning: {line}")
    return 0


def _state_line(config: NexusConfig, file: Path | None) -> str:
    """Where ``nexus serve`` with this configuration keeps spend, keys and run-time backends."""
    import os

    from nexus_core.config import find_config_file
    from nexus_core.state.location import describe_state

    where = describe_state(
        config.state, os.environ, config_file=find_config_file(file), port=config.server.port
    )
    return f"durable state (spend, rate limits, run-time keys and backends): {where}"


def _source_name(file: Path | None) -> str:
    """How error lines name the configuration: its file, else ``defaults``."""
    from nexus_core.config import find_config_file

    found = find_config_file(file)
    return str(found) if found is not None else "defaults"


def _secret_lines(config: NexusConfig, *, missing_only: bool = False) -> list[str]:
    from nexus_core.config import secret_status

    lines = []
    for key_path, is_set in secret_status(config).items():
        if missing_only and is_set:
            continue
        state = "set" if is_set else "NOT set in this environment"
        lines.append(f"{key_path}: the variable it names is {state}")
    return lines


@app.command
def plugins(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """List plugins: their distributions, versions, the backend types they add, and failures.

    Parameters
    ----------
    json_output
        Print JSON (a list of objects) instead of a table.
    """
    from nexus_core.plugins import plugin_report

    report = plugin_report()
    if json_output:
        print(json.dumps([dataclasses.asdict(info) for info in report], indent=2))
        return 0
    print(_plugin_table(report))
    return 0


def _plugin_table(report: list[PluginInfo]) -> str:
    header = ("PLUGIN", "DISTRIBUTION", "VERSION", "BACKEND TYPES", "STATUS")
    rows = [
        (
            info.name,
            info.distribution or "-",
            info.version or "-",
            ", ".join(info.backend_types) or "-",
            "ok" if info.error is None else "FAILED",
        )
        for info in report
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    failures = [info for info in report if info.error is not None]
    if failures:
        lines.append("")
        lines.extend(f"{info.name} ({info.module}) failed: {info.error}" for info in failures)
    if not report:
        lines.append("(no plugins)")
    return "\n".join(lines)


@app.command
def advertise(
    *,
    port: int,
    backend_type: Annotated[str, Parameter(name="--type")] = "auto",
    name: str | None = None,
    api_path: str = "",
    models: str = "",
    address: list[str] | None = None,
    interface: list[str] | None = None,
) -> int:
    """Announce an inference server over mDNS so that Nexus finds it, until Ctrl-C or SIGTERM.

    Ollama (and most servers) do not announce themselves; run this next to them. Type ollama
    is published as _ollama._tcp.local., any other type as _llm._tcp.local. with TXT type.

    Parameters
    ----------
    port
        TCP port of the server (11434 for Ollama).
    backend_type
        Backend type (ollama, vllm, llamacpp, ...); auto leaves it to Nexus to probe.
    name
        Instance name (default: this machine's host name and the type).
    api_path
        Base path of the server's API, if not at the root (TXT api_path).
    models
        Comma-separated models it serves, as a hint (TXT models).
    address
        Address clients reach the server at (repeatable; default: this machine's).
    interface
        Address of a local interface to send mDNS on (repeatable; default: every interface).
    """
    from nexus_core.discovery import TYPE_ALIASES
    from nexus_core.plugins import backend_types
    from nexus_server.advertise import Advertisement

    kind = backend_type.strip().lower()
    kind = TYPE_ALIASES.get(kind, kind)
    advertisement = Advertisement(
        port=port,
        type=None if kind == "auto" else kind,
        name=name,
        api_path=api_path,
        models=tuple(m.strip() for m in models.split(",") if m.strip()),
        addresses=tuple(address or ()),
    )
    from nexus_server.advertise import check, run

    problems = check(advertisement, sorted(backend_types()))
    for line in problems:
        _error(line)
    if problems:
        return 1
    return run(advertisement, list(interface or ()))


@app.command
def completions(shell: Literal["bash", "zsh", "fish"]) -> int:
    """Print a shell completion script, e.g. `nexus completions bash > ~/.nexus-complete.bash`.

    Parameters
    ----------
    shell
        The shell to complete for.
    """
    sys.stdout.write(app.generate_completion(prog_name="nexus", shell=shell))
    return 0


# --- commands that talk to a running server ----------------------------------------------------
# Each opens one client, makes its calls and prints; a failed call is one "error: ..." line on
# standard error and exit status 1 (2 for `nexus health`: no answer is as bad as unhealthy).


def _remote(url: str, command: Callable[[NexusClient], int], *, failure: int = 1) -> int:
    from nexus_server.client import ClientError, NexusClient

    try:
        with NexusClient(url) as nexus:
            return command(nexus)
    except ClientError as exc:
        _error(f"error: {exc.message}")
        return failure
    except KeyboardInterrupt:
        return 130


def _path_segment(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


@backends_app.command(name="list")
def backends_list(
    *,
    url: ServerUrl = DEFAULT_URL,
    json_output: JsonFlag = False,
    status: Annotated[BackendStatusName | None, Parameter(name=["--status", "-s"])] = None,
) -> int:
    """List the backends: type, status, zone, tier, priority, load, latency and models.

    Parameters
    ----------
    url
        The Nexus to talk to.
    json_output
        Print the backends as a JSON array instead of a table.
    status
        Only the backends with this status.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        backends = client.list_data(nexus.get("/admin/backends"), "backend list")
        if status is not None:
            backends = [b for b in backends if b.get("status") == status]
        if json_output:
            client.print_json(backends)
        else:
            print(client.backend_table(backends, colour=client.use_colour()))
        return 0

    return _remote(url, command)


@backends_app.command(name="add")
def backends_add(
    backend_url: Annotated[str, Parameter(name="URL")],
    /,
    *,
    url: ServerUrl = DEFAULT_URL,
    name: Annotated[str | None, Parameter(name=["--name", "-n"])] = None,
    backend_type: Annotated[str | None, Parameter(name=["--type", "-t", "--backend-type"])] = None,
    zone: Literal["restricted", "open"] | None = None,
    tier: int | None = None,
    priority: Annotated[int | None, Parameter(name=["--priority", "-p"])] = None,
    json_output: JsonFlag = False,
) -> int:
    """Add a backend at URL; Nexus probes it (and detects its type) before answering.

    Parameters
    ----------
    backend_url
        Base URL of the inference server, e.g. http://gpu-box:11434.
    url
        The Nexus to talk to.
    name
        Name of the backend (default: the server derives one from the URL).
    backend_type
        Backend type (ollama, vllm, llamacpp, generic, ...); default: detected by probing.
    zone
        Privacy zone of the backend.
    tier
        Capability tier, 1-5.
    priority
        Routing priority (lower is preferred).
    json_output
        Print the new backend as JSON instead of one line.
    """
    from nexus_server import client

    body: dict[str, Any] = {"url": backend_url}
    fields = {"name": name, "type": backend_type, "zone": zone, "tier": tier, "priority": priority}
    body.update({key: value for key, value in fields.items() if value is not None})

    def command(nexus: NexusClient) -> int:
        answer = nexus.post("/admin/backends", body, read_timeout=client.ADD_READ_TIMEOUT)
        backend = client.object_data(answer, "add backend")
        if json_output:
            client.print_json(backend)
            return 0
        status = str(backend.get("status"))
        shown = client.paint(status, status, client.use_colour())
        print(
            f"added backend {backend.get('name')} ({backend.get('type')}, {shown}) "
            f"at {backend.get('url')}"
        )
        return 0

    return _remote(url, command)


@backends_app.command(name="remove")
def backends_remove(name: str, /, *, url: ServerUrl = DEFAULT_URL) -> int:
    """Remove the backend NAME; requests already on it finish.

    Parameters
    ----------
    name
        Name of the backend.
    url
        The Nexus to talk to.
    """

    def command(nexus: NexusClient) -> int:
        nexus.delete(f"/admin/backends/{_path_segment(name)}")
        print(f"removed backend {name}")
        return 0

    return _remote(url, command)


@backends_app.command(name="drain")
def backends_drain(
    name: str, /, *, url: ServerUrl = DEFAULT_URL, json_output: JsonFlag = False
) -> int:
    """Drain the backend NAME: it takes no new requests; those in flight finish.

    Parameters
    ----------
    name
        Name of the backend.
    url
        The Nexus to talk to.
    json_output
        Print the backend as JSON instead of one line.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        answer = nexus.post(f"/admin/backends/{_path_segment(name)}/drain")
        backend = client.object_data(answer, "drain")
        if json_output:
            client.print_json(backend)
            return 0
        pending = backend.get("pending")
        print(f"draining backend {backend.get('name', name)} ({pending} requests in flight)")
        return 0

    return _remote(url, command)


@models_app.default
def models(
    *,
    url: ServerUrl = DEFAULT_URL,
    json_output: JsonFlag = False,
    backend: Annotated[str | None, Parameter(name=["--backend", "-b"])] = None,
) -> int:
    """List the models Nexus serves (on healthy backends): context, capabilities, backends.

    Parameters
    ----------
    url
        The Nexus to talk to.
    json_output
        Print the models as a JSON array instead of a table.
    backend
        Only the models this backend serves; a name that is no backend is an error.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        entries = client.list_data(nexus.get("/v1/models"), "model list")
        if backend is not None:
            # Asked of the admin API: /v1/models names only the backends that serve a model.
            known = client.list_data(nexus.get("/admin/backends"), "backend list")
            found = next((b for b in known if b.get("name") == backend), None)
            if found is None:
                names = ", ".join(sorted(str(b.get("name")) for b in known)) or "none"
                _error(f"error: no backend named {backend!r} (backends: {names})")
                return 1
            status = found.get("status")
            if status != "healthy":
                _error(f"note: backend {backend} is {status}: its models are not served now")
            entries = [m for m in entries if backend in (m.get("backends") or ())]
        if json_output:
            client.print_json(entries)
        else:
            print(client.model_table(entries))
        return 0

    return _remote(url, command)


#: ``--no-wait``: print the operation as it starts and return.
NoWait = Annotated[bool, Parameter(name="--no-wait")]


def _run_operation(
    url: str, path: str, body: dict[str, Any], *, no_wait: bool, json_output: bool
) -> int:
    """Start an operation; unless ``no_wait``, follow it to its end (exit 1 if it failed)."""
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        started = client.object_data(nexus.post(path, body), "operation")
        if no_wait:
            if json_output:
                client.print_json(started)
            else:
                print(f"started {client.operation_progress(started)}")
            return 0
        try:
            ended = client.follow_operation(nexus, started, sys.stderr)
        except KeyboardInterrupt:
            _error(
                f"\nstopped waiting; operation {started.get('id')} goes on "
                "(nexus operations shows it)"
            )
            return 130
        if json_output:
            client.print_json(ended)
        elif ended.get("state") == "succeeded":
            print(client.operation_outcome(ended))
        if ended.get("state") != "succeeded":
            _error(f"error: {client.operation_outcome(ended)}")
            return 1
        return 0

    return _remote(url, command)


@models_app.command(name="load")
def models_load(
    model: str,
    /,
    *,
    backend: Annotated[str, Parameter(name=["--backend", "-b"])],
    url: ServerUrl = DEFAULT_URL,
    no_wait: NoWait = False,
    json_output: JsonFlag = False,
) -> int:
    """Load MODEL on a backend and wait until Nexus routes requests for it there.

    Parameters
    ----------
    model
        The model's id on that backend.
    backend
        Name of the backend.
    url
        The Nexus to talk to.
    no_wait
        Print the operation as it starts and return at once.
    json_output
        Print the operation (as it ended, or started with --no-wait) as JSON.
    """
    body = {"model": model, "backend": backend}
    return _run_operation(url, "/admin/models/load", body, no_wait=no_wait, json_output=json_output)


@models_app.command(name="unload")
def models_unload(
    model: str,
    /,
    *,
    backend: Annotated[str, Parameter(name=["--backend", "-b"])],
    url: ServerUrl = DEFAULT_URL,
    no_wait: NoWait = False,
    json_output: JsonFlag = False,
) -> int:
    """Unload MODEL from a backend once its requests there have finished.

    Parameters
    ----------
    model
        The model's id on that backend.
    backend
        Name of the backend.
    url
        The Nexus to talk to.
    no_wait
        Print the operation as it starts and return at once.
    json_output
        Print the operation (as it ended, or started with --no-wait) as JSON.
    """
    body = {"model": model, "backend": backend}
    return _run_operation(
        url, "/admin/models/unload", body, no_wait=no_wait, json_output=json_output
    )


@models_app.command(name="migrate")
def models_migrate(
    model: str,
    /,
    *,
    source: Annotated[str, Parameter(name="--from")],
    target: Annotated[str, Parameter(name="--to")],
    url: ServerUrl = DEFAULT_URL,
    no_wait: NoWait = False,
    json_output: JsonFlag = False,
) -> int:
    """Move MODEL from one backend to another without dropping a request: load it on the
    target, send new requests there, let those on the source finish, unload the source.

    Parameters
    ----------
    model
        The model's id on both backends.
    source
        The backend the model leaves.
    target
        The backend the model goes to.
    url
        The Nexus to talk to.
    no_wait
        Print the operation as it starts and return at once.
    json_output
        Print the operation (as it ended, or started with --no-wait) as JSON.
    """
    body = {"model": model, "from": source, "to": target}
    return _run_operation(
        url, "/admin/models/migrate", body, no_wait=no_wait, json_output=json_output
    )


@app.command
def operations(*, url: ServerUrl = DEFAULT_URL, json_output: JsonFlag = False) -> int:
    """List the model operations (loads, unloads, migrations): running, then the last finished.

    Parameters
    ----------
    url
        The Nexus to talk to.
    json_output
        Print the operations as a JSON array instead of a table.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        listed = client.list_data(nexus.get("/admin/operations"), "operation list")
        if json_output:
            client.print_json(listed)
        else:
            print(client.operation_table(listed))
        return 0

    return _remote(url, command)


@app.command
def health(*, url: ServerUrl = DEFAULT_URL, json_output: JsonFlag = False) -> int:
    """Show whether Nexus is healthy; the exit status says it too (0, 1 degraded, 2 unhealthy).

    Exit status 2 also when the server cannot be reached: made for scripts and container
    health checks.

    Parameters
    ----------
    url
        The Nexus to talk to.
    json_output
        Print the server's health document as JSON instead of a summary.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        # A 503 that carries a health document still says how the server is.
        answer = nexus.request("GET", "/health", accept_status=(503,))
        summary = client.object_data(answer, "health")
        code = client.HEALTH_EXIT.get(str(summary.get("status")))
        if code is None:
            _error(f"error: unexpected health status {summary.get('status')!r}")
            return client.UNHEALTHY_EXIT
        if json_output:
            client.print_json(summary)
        else:
            print(client.health_summary(summary, nexus.url, colour=client.use_colour()))
        return code

    return _remote(url, command, failure=client.UNHEALTHY_EXIT)


@keys_app.command(name="create")
def keys_create(
    name: str,
    /,
    *,
    url: ServerUrl = DEFAULT_URL,
    models: Annotated[list[str] | None, Parameter(name="--models", consume_multiple=True)] = None,
    rpm: int | None = None,
    tpm: int | None = None,
    budget: float | None = None,
    json_output: JsonFlag = False,
) -> int:
    """Create the API key NAME and print it: the only time the key is shown.

    Parameters
    ----------
    name
        Name of the key (who or what uses it).
    url
        The Nexus to talk to.
    models
        Model the key may use, a glob such as "llama*" (repeatable; default: every model).
    rpm
        Requests per minute at most.
    tpm
        Tokens per minute at most.
    budget
        Monthly budget in US dollars.
    json_output
        Print the server's answer (with the key) as JSON.
    """
    from nexus_server import client

    body: dict[str, Any] = {"name": name}
    fields = {
        "models": models,
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "monthly_budget_usd": budget,
    }
    body.update({key: value for key, value in fields.items() if value is not None})

    def command(nexus: NexusClient) -> int:
        created = client.object_data(nexus.post("/admin/keys", body), "create key")
        if json_output:
            client.print_json(created)
            return 0
        print(f"created key {created.get('name', name)}:")
        print()
        print(f"    {created.get('key')}")
        print()
        print("Store it now: it cannot be shown again.")
        return 0

    return _remote(url, command)


@keys_app.command(name="list")
def keys_list(*, url: ServerUrl = DEFAULT_URL, json_output: JsonFlag = False) -> int:
    """List the API keys: models, limits, budget, and where each comes from (never the key).

    Parameters
    ----------
    url
        The Nexus to talk to.
    json_output
        Print the keys as a JSON array instead of a table.
    """
    from nexus_server import client

    def command(nexus: NexusClient) -> int:
        keys = client.list_data(nexus.get("/admin/keys"), "key list")
        if json_output:
            client.print_json(keys)
        else:
            print(client.key_table(keys))
        return 0

    return _remote(url, command)


@keys_app.command(name="revoke")
def keys_revoke(name: str, /, *, url: ServerUrl = DEFAULT_URL) -> int:
    """Revoke the API key NAME: requests with it are refused from now on.

    Parameters
    ----------
    name
        Name of the key.
    url
        The Nexus to talk to.
    """

    def command(nexus: NexusClient) -> int:
        nexus.delete(f"/admin/keys/{_path_segment(name)}")
        print(f"revoked key {name}")
        return 0

    return _remote(url, command)


def main() -> None:
    """Entry point of the ``nexus`` console script."""
    app()


if __name__ == "__main__":
    main()
