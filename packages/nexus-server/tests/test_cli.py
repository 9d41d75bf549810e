"""The ``nexus`` command line, run in-process through cyclopts and as a real subprocess."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import typing
from pathlib import Path

import httpx
import pytest
from cyclopts import App

from nexus_core import plugins as plugin_host
from nexus_core.config import NexusConfig, validate_config
from nexus_core.config.example import example_config
from nexus_core.testing import free_port
from nexus_server import __version__
from nexus_server.cli import app

CLI_PAGE = Path(__file__).resolve().parents[3] / "docs" / "cli.md"
BUNDLED_TYPES = {"ollama", "vllm", "llamacpp", "lmstudio", "exo", "openai", "localai"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NEXUS_* variable from the developer's shell, and a working directory of our own."""
    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def nexus(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``nexus ARGS`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = app(list(args), result_action="return_value")
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    return code, out, err


def nexus_process(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --- version -----------------------------------------------------------------------------------


def test_version_as_a_process() -> None:
    result = nexus_process("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / ("nexus.exe" if os.name == "nt" else "nexus")
    assert script.exists()
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == __version__


def test_cli_module_imports_no_server_or_config_code() -> None:
    code = (
        "import sys, nexus_server.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'litestar', 'uvicorn', 'pydantic', 'nexus_core', 'httpx'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# --- config init / check ---------------------------------------------------------------------


@pytest.mark.parametrize("minimal", [False, True])
def test_init_then_check_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, minimal: bool
) -> None:
    args = ["config", "init", *(["--minimal"] if minimal else [])]
    code, out, _ = nexus(capsys, *args)
    assert code == 0
    assert "nexus.toml" in out
    written = (tmp_path / "nexus.toml").read_text(encoding="utf-8")
    assert written == example_config(minimal)

    code, out, err = nexus(capsys, "config", "check", "nexus.toml")
    assert (code, err) == (0, "")
    assert validate_config(tomllib.loads(out)) == NexusConfig()

    code, out, err = nexus(capsys, "config", "check", "nexus.toml", "--format", "json")
    assert (code, err) == (0, "")
    assert validate_config(json.loads(out)) == NexusConfig()


def test_init_refuses_to_overwrite_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "mine.toml"
    target.write_text("# my settings\n", encoding="utf-8")
    code, out, err = nexus(capsys, "config", "init", "--output", str(target))
    assert code == 1
    assert out == ""
    assert err == f"{target} already exists; pass --force to overwrite it\n"
    assert target.read_text(encoding="utf-8") == "# my settings\n"

    code, _, _ = nexus(capsys, "config", "init", "--output", str(target), "--force")
    assert code == 0
    assert target.read_text(encoding="utf-8") == example_config(False)


def test_init_to_standard_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = nexus(capsys, "config", "init", "--minimal", "--output", "-")
    assert code == 0
    assert out == example_config(True)
    assert not (tmp_path / "nexus.toml").exists()


def test_check_reports_every_error_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sever]\n[routing]\nstrategy = 'the best'\n", encoding="utf-8")
    code, out, err = nexus(capsys, "config", "check", str(path))
    assert code == 1
    assert out == ""
    assert sorted(err.splitlines()) == [
        f"{path}: routing.strategy: must be a built-in strategy ('smart', 'round_robin', "
        "'priority_only', 'random', 'least_loaded', 'cache_affinity') or the name of one a "
        "plugin registers (lower-case letters, digits, '_', '.', '-', starting with a letter) "
        "(got 'the best')",
        f"{path}: sever: unknown key; did you mean 'server'?",
    ]


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = nexus(capsys, "config", "check", "absent.toml")
    assert (code, err) == (1, "absent.toml: no such file\n")


def test_check_refuses_unregistered_backend_types(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(
        "[[backends]]\nname = 'box'\nurl = 'http://box:11434'\ntype = 'olama'\n", encoding="utf-8"
    )
    code, out, err = nexus(capsys, "config", "check")
    assert code == 1
    assert out == ""
    assert err.startswith(
        "nexus.toml: backends[0].type: unknown backend type 'olama'; did you mean 'ollama'? "
        "(installed types: "
    )


def test_check_applies_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_PORT", "9123")
    monkeypatch.setenv("NEXUS_LOG_LEVEL", "DEBUG")
    code, out, _ = nexus(capsys, "config", "check", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["server"]["port"] == 9123
    assert data["logging"]["level"] == "debug"

    monkeypatch.setenv("NEXUS_PORT", "many")
    code, out, err = nexus(capsys, "config", "check")
    assert (code, out) == (1, "")
    assert err == "environment variable NEXUS_PORT: server.port: must be an integer (got 'many')\n"


def test_check_never_prints_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(
        "[[backends]]\nname = 'cloud'\nurl = 'https://api.openai.com'\ntype = 'openai'\n"
        "api_key_env = 'NEXUS_TEST_OPENAI_KEY'\n"
        "[[backends]]\nname = 'box'\nurl = 'http://admin:hunter2@box:8000'\n"
        "[state]\nbackend = 'redis'\nredis_url_env = 'NEXUS_TEST_REDIS_URL'\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("NEXUS_TEST_OPENAI_KEY", "sk-test-0123456789")
    for output_format in ("toml", "json"):
        code, out, err = nexus(capsys, "config", "check", "--format", output_format)
        assert code == 0
        assert "sk-test-0123456789" not in out + err
        assert "hunter2" not in out + err
        assert "NEXUS_TEST_OPENAI_KEY" in out
        assert err == (
            "warning: state.redis_url_env: the variable it names is NOT set in this environment\n"
        )
        if output_format == "toml":
            assert "# backends[0].api_key_env: the variable it names is set" in out.splitlines()


def test_check_output_loads_back_as_the_same_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "nexus.toml"
    source.write_text(example_config(False, include_examples=True), encoding="utf-8")
    code, out, _ = nexus(capsys, "config", "check")
    assert code == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(out, encoding="utf-8")
    code, again, _ = nexus(capsys, "config", "check", str(printed))
    assert code == 0
    assert tomllib.loads(again) == tomllib.loads(out)
    expected = validate_config(tomllib.loads(source.read_text(encoding="utf-8")))
    assert validate_config(tomllib.loads(out)) == expected


# --- plugins ---------------------------------------------------------------------------------


def test_plugins_json_lists_generic_and_the_bundled_types(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = nexus(capsys, "plugins", "--json")
    assert code == 0
    report = json.loads(out)
    assert out.rstrip("\n") == json.dumps(
        [dataclasses.asdict(info) for info in plugin_host.plugin_report()], indent=2
    )
    fields = {"name", "distribution", "version", "module", "backend_types", "error"}
    assert all(set(entry) == fields for entry in report)
    types = {name for entry in report for name in entry["backend_types"]}
    assert {"generic", *BUNDLED_TYPES} <= types
    ollama = next(entry for entry in report if "ollama" in entry["backend_types"])
    assert ollama["distribution"] == "nexusgw-backend-ollama"
    assert ollama["error"] is None


def test_plugins_table_shows_plugins_and_failures(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    report = [
        plugin_host.PluginInfo("ollama", "nexusgw-backend-ollama", "0.1.0", "x", ["ollama"]),
        plugin_host.PluginInfo(
            "broken", "nexusgw-backend-broken", "9.9", "broken_mod", error="ImportError: nope"
        ),
    ]
    monkeypatch.setattr(plugin_host, "plugin_report", lambda: report)
    code, out, _ = nexus(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "BACKEND", "TYPES", "STATUS"]
    assert lines[1].split() == ["ollama", "nexusgw-backend-ollama", "0.1.0", "ollama", "ok"]
    assert lines[2].split() == ["broken", "nexusgw-backend-broken", "9.9", "-", "FAILED"]
    assert "broken (broken_mod) failed: ImportError: nope" in lines


def test_plugins_table_with_the_real_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = nexus(capsys, "plugins")
    assert code == 0
    for backend_type in ("generic", *BUNDLED_TYPES):
        assert backend_type in out


# --- completions -----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completions(capsys: pytest.CaptureFixture[str], shell: str) -> None:
    code, out, _ = nexus(capsys, "completions", shell)
    assert code == 0
    assert "nexus" in out
    for word in ("serve", "config", "plugins", "no-discovery"):
        assert word in out, word


def test_completions_for_an_unknown_shell_fail() -> None:
    result = nexus_process("completions", "tcsh")
    assert result.returncode != 0
    assert result.stdout == ""


# --- serve -----------------------------------------------------------------------------------


def test_serve_turns_flags_into_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import nexus_server.serve

    seen: list[NexusConfig] = []
    files: list[Path | None] = []

    def fake_run(config: NexusConfig, *, source: str, config_file: Path | None) -> int:
        seen.append(config)
        files.append(config_file)
        return 7

    monkeypatch.setattr(nexus_server.serve, "run", fake_run)
    path = tmp_path / "custom.toml"
    path.write_text("[server]\nport = 9000\nhost = '10.0.0.1'\n", encoding="utf-8")
    monkeypatch.setenv("NEXUS_PORT", "9100")

    code, _, _ = nexus(capsys, "serve", "--config", str(path))
    assert code == 7
    assert (seen[-1].server.host, seen[-1].server.port) == ("10.0.0.1", 9100)
    assert seen[-1].discovery.enabled
    assert seen[-1].health_check.enabled
    assert files[-1] == path  # what names the instance's state file

    args = ["--host", "127.0.0.1", "--port", "9200", "--no-discovery", "--no-health-check"]
    code, _, _ = nexus(capsys, "serve", "--config", str(path), *args)
    assert code == 7
    assert (seen[-1].server.host, seen[-1].server.port) == ("127.0.0.1", 9200)
    assert not seen[-1].discovery.enabled
    assert not seen[-1].health_check.enabled


def test_serve_with_a_bad_configuration_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nexus_server.serve

    monkeypatch.setattr(
        nexus_server.serve, "run", lambda config, source: pytest.fail("must not run")
    )
    code, out, err = nexus(capsys, "serve", "--port", "0")
    assert (code, out) == (1, "")
    assert err == "command line: server.port: must be >= 1 (got 0)\n"
    code, _, err = nexus(capsys, "serve", "--config", "absent.toml")
    assert (code, err) == (1, "absent.toml: no such file\n")


@pytest.mark.slow
def test_serve_runs_the_gateway_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "nexus_server.cli", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--no-discovery", "--no-health-check"),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None, "nexus serve did not answer"
        assert response.status_code == 200
        assert response.json()["version"] == __version__
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so either code is a clean stop.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate(timeout=10)[0]
    assert "listening" in output


# --- advertise -------------------------------------------------------------------------------
# Only the command line: publishing over mDNS is tested in tests/discovery_ns, in a private
# network namespace; here ``run`` is replaced so that no zeroconf starts.


def test_advertise_turns_flags_into_an_advertisement(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nexus_server.advertise
    from nexus_server.advertise import Advertisement

    seen: list[tuple[Advertisement, list[str]]] = []
    monkeypatch.setattr(
        nexus_server.advertise, "run", lambda ad, interfaces: seen.append((ad, interfaces)) or 0
    )
    args = ["--type", "llama.cpp", "--port", "8080", "--name", "Rack 1", "--api-path", "/v1"]
    more = ["--models", "a, b,", "--address", "10.0.0.5", "--address", "fd00::5"]
    code, _, err = nexus(capsys, "advertise", *args, *more, "--interface", "10.0.0.1")
    assert (code, err) == (0, "")
    ad, interfaces = seen[-1]
    assert (ad.type, ad.port, ad.name, ad.api_path) == ("llamacpp", 8080, "Rack 1", "/v1")
    assert (ad.models, ad.addresses, interfaces) == (
        ("a", "b"),
        ("10.0.0.5", "fd00::5"),
        ["10.0.0.1"],
    )
    assert ad.service_type == "_llm._tcp.local."

    code, _, err = nexus(capsys, "advertise", "--port", "11434", "--type", "Ollama")
    assert (code, seen[-1][0].type, seen[-1][0].service_type) == (
        0,
        "ollama",
        "_ollama._tcp.local.",
    )
    code, _, err = nexus(capsys, "advertise", "--port", "11434")
    assert (code, seen[-1][0].type, seen[-1][0].txt()) == (0, None, {})
    code, _, err = nexus(capsys, "advertise", "--port", "11434", "--type", "olama")
    assert code == 0
    assert err == "warning: 'olama' is not a backend type installed here; did you mean 'ollama'?\n"


def test_advertise_refuses_bad_flags_before_touching_the_network(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nexus_server.advertise

    monkeypatch.setattr(nexus_server.advertise, "run", lambda *args: pytest.fail("must not run"))
    args = ["--port", "70000", "--address", "gpu-box", "--api-path", "/v1?x", "--name", "x" * 64]
    code, out, err = nexus(capsys, "advertise", *args)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "--port: must be 1-65535 (got 70000)",
        "--api-path: TXT api_path '/v1?x' is not a URL path",
        "--address: not an IP address: 'gpu-box'",
        f"--name: must be 1-63 bytes (got {'x' * 64!r})",
    ]


# --- documentation -----------------------------------------------------------------------------


def _commands(parent: App, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], App]]:
    found: list[tuple[tuple[str, ...], App]] = []
    for name in parent:
        if name.startswith("-"):
            continue
        command = parent[name]
        if any(not sub.startswith("-") for sub in command):
            if command.default_command is not None:  # ``nexus models`` runs on its own too
                found.append(((*prefix, name), command))
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


def test_every_command_and_flag_is_on_the_cli_page() -> None:
    text = CLI_PAGE.read_text(encoding="utf-8")
    commands = _commands(app)
    assert {path for path, _ in commands} >= {
        *(("serve",), ("config", "init"), ("plugins",), ("models",), ("health",)),
        *(("backends", "list"), ("backends", "add"), ("backends", "remove")),
        *(("backends", "drain"), ("keys", "create"), ("keys", "list"), ("keys", "revoke")),
    }
    for path, command in commands:
        assert f"## `nexus {' '.join(path)}`" in text, path
        for argument in command.assemble_argument_collection():
            if argument.field_info.kind is inspect.Parameter.KEYWORD_ONLY:
                assert f"`{argument.names[0]}" in text, (path, argument.names[0])


def test_the_generated_help_matches_the_cli_page(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's section shows its usage, and every flag and variable its ``--help`` shows."""
    text = CLI_PAGE.read_text(encoding="utf-8")
    for path, command in _commands(app):
        section = text.split(f"## `nexus {' '.join(path)}`", 1)[1].split("\n## ", 1)[0]
        usage = section.split("```\n", 2)[1]
        assert usage.startswith(f"nexus {' '.join(path)}"), path
        positional = set()
        for argument in command.assemble_argument_collection():
            if argument.field_info.kind is inspect.Parameter.KEYWORD_ONLY:
                continue
            name = argument.names[0].lstrip("-").upper()
            positional.add(argument.names[0])
            choices = typing.get_args(argument.hint)
            assert name in usage or "|".join(choices) in usage, (path, name)
        capsys.readouterr()
        app([*path, "--help"], result_action="return_value")
        help_text = capsys.readouterr().out
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text)) - {"--help", *positional}
        for flag in flags:
            assert flag in usage, (path, flag)
            assert f"`{flag}" in section or "--url" in flag, (path, flag)
        for variable in re.findall(r"env var: (\w+)", help_text):
            assert f"`{variable}`" in text, (path, variable)
