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
from typing import TYPE_CHECKING, Annotated, Literal

from cyclopts import App, Parameter

from nexus_server import __version__

if TYPE_CHECKING:
    from nexus_core.config import NexusConfig
    from nexus_core.plugins import PluginInfo

app = App(
    name="nexus",
    version=__version__,
    help="Nexus: one OpenAI-compatible endpoint in front of your LLM inference servers.",
    # Flags are opt-in switches (--force, --no-discovery); no generated --no-force twins.
    default_parameter=Parameter(negative=()),
)
config_app = App(name="config", help="Write and check configuration files.")
app.command(config_app)


def _error(line: str) -> None:
    print(line, file=sys.stderr)


@app.command
def serve(
    *,
    config: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    no_discovery: bool = False,
    no_health_check: bool = False,
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
    no_discovery
        Do not browse the local network over mDNS (discovery.enabled = false).
    no_health_check
        Do not probe backends in the background (health_check.enabled = false).
    """
    from nexus_core.config import ConfigError, load_config

    overrides = {
        "server.host": host,
        "server.port": port,
        "discovery.enabled": False if no_discovery else None,
        "health_check.enabled": False if no_health_check else None,
    }
    try:
        effective = load_config(config, overrides=overrides)
    except ConfigError as exc:
        for line in exc.errors:
            _error(line)
        return 1

    from nexus_server.serve import run

    return run(effective)


@config_app.command
def init(
    *,
    output: Annotated[Path, Parameter(allow_leading_hyphen=True)] = Path("nexus.toml"),
    force: bool = False,
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
    from nexus_core.config_template import example_config

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
    from nexus_core.config import ConfigError, find_config_file, load_config, mask_secrets

    try:
        config = load_config(file)
    except ConfigError as exc:
        for line in exc.errors:
            _error(line)
        return 1
    found = find_config_file(file)
    source = str(found) if found is not None else "defaults"
    problems = _backend_type_problems(config, source)
    if problems:
        for line in problems:
            _error(line)
        return 1
    data = mask_secrets(config)
    if output_format == "json":
        print(json.dumps(data, indent=2))
    else:
        from nexus_core.config_template import to_toml

        print(f"# effective configuration: {source}, environment (NEXUS_*) applied")
        for line in _secret_lines(config):
            print(f"# {line}")
        print()
        sys.stdout.write(to_toml(data))
    for line in _secret_lines(config, missing_only=True):
        _error(f"warning: {line}")
    return 0


def _backend_type_problems(config: NexusConfig, source: str) -> list[str]:
    """One line per backend whose type no installed plugin registers."""
    import difflib

    from nexus_core.config import AUTO_TYPE
    from nexus_core.plugins import backend_types, plugin_report

    known = sorted(backend_types())
    problems: list[str] = []
    for index, backend in enumerate(config.backends):
        if backend.type in known or backend.type == AUTO_TYPE:
            continue
        close = difflib.get_close_matches(backend.type, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"{source}: backends[{index}].type: unknown backend type {backend.type!r}{hint} "
            f"(installed types: {', '.join(known) or 'none'})"
        )
    if problems:
        for info in plugin_report():
            if info.error:
                problems.append(f"note: plugin {info.name!r} failed to load: {info.error}")
    return problems


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
    from nexus_core.discovery import TYPE_ALIASES, Advertisement
    from nexus_core.plugins import backend_types

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


def main() -> None:
    """Entry point of the ``nexus`` console script."""
    app()


if __name__ == "__main__":
    main()
