"""docs/api.md's error table and the code agree: every ``code`` Nexus can send is in the table,
every code in the table is sent somewhere, and the requests that are cheap to make get the status
and code of their row from a running Nexus."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_core.adapters import ErrorKind
from nexus_core.testing import FakeBackend
from nexus_server.testing import RunningServer, running_server
from tests.conftest import gateway_config

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"
CODE = re.compile(r"`([a-z][a-z0-9_]*)`")


def error_table() -> dict[str, set[str]]:
    """``code`` -> the statuses its rows give, from the first table under ``## Errors``."""
    text = API.read_text()
    section = text[text.index("\n## Errors\n") :]
    section = section[: section.index("\n## ", 1)]
    lines = section.splitlines()
    start = lines.index("| status | `code` | when |")
    assert lines[start + 1] == "|---|---|---|"
    table: dict[str, set[str]] = {}
    for row in lines[start + 2 :]:
        if not row.startswith("| "):
            break  # the end of the table
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 3, row
        status, codes, _ = cells
        for code in CODE.findall(codes):
            table.setdefault(code, set()).add(status)
    return table


def _str(node: ast.AST | None) -> list[str]:
    """The string constants ``node`` can be: a constant, or either side of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _str(node.body) + _str(node.orelse)
    return []


def source_codes() -> dict[str, set[str]]:
    """Every error ``code`` written as a constant in the distributions' sources (not the fakes):
    ``code=`` arguments (positional ones too, for functions of the same module with a ``code``
    parameter), ``"code": ...`` in dict literals, and the values of ``*CODE*`` / ``*ERRORS``
    tables (a tuple's first item)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.glob("packages/*/src/**/*.py")):
        if "testing" in path.parts:
            continue
        where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        params: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
                params.setdefault(
                    node.name, names[1:] if names[:1] in (["self"], ["cls"]) else names
                )
        values: list[ast.AST | None] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                values += [kw.value for kw in node.keywords if kw.arg == "code"]
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                values += [
                    arg
                    for arg, param in zip(node.args, params.get(name, ()), strict=False)
                    if param == "code"
                ]
            elif isinstance(node, ast.Dict):
                values += [
                    value
                    for key, value in zip(node.keys, node.values, strict=True)
                    if isinstance(key, ast.Constant) and key.value == "code"
                ]
            elif (
                isinstance(node, ast.Assign | ast.AnnAssign)
                and isinstance(node.value, ast.Dict)
                and any(
                    isinstance(t, ast.Name) and ("CODE" in t.id or t.id.endswith("ERRORS"))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                )
            ):
                for value in node.value.values:
                    values.append(value.elts[0] if isinstance(value, ast.Tuple) else value)
        for value in values:
            for code in _str(value):
                found.setdefault(code, set()).add(where)
    return found


def test_every_code_the_source_sends_is_in_the_table() -> None:
    table = error_table()
    missing = {code: sorted(where) for code, where in source_codes().items() if code not in table}
    assert not missing, f"codes sent but not in docs/api.md's error table: {missing}"


def test_every_code_in_the_table_is_sent_somewhere() -> None:
    sent = source_codes()
    unknown = sorted(code for code in error_table() if code not in sent)
    assert not unknown, f"codes in docs/api.md's error table that nothing sends: {unknown}"


def test_the_collector_finds_codes_of_every_form() -> None:
    # A form the collector stopped seeing would make the two tests above pass vacuously.
    sent = source_codes()
    assert "missing_model" in sent  # bad_request(..., code="missing_model")
    assert "queue_full" in sent  # self._busy(message, "queue_full"): positional
    assert {"not_supported", "embeddings_not_supported"} <= set(sent)  # a if c else b
    assert "context_length_exceeded" in sent  # CAPABILITY_ERRORS = {name: (code, param)}
    assert "unsupported_media_type" in sent  # _CODE_BY_STATUS = {415: ...}


def test_every_attempt_kind_is_named_under_the_table() -> None:
    text = API.read_text()
    section = text[text.index("\n## Errors\n") :]
    section = section[: section.index("\n## ", 1)]
    assert not [kind.value for kind in ErrorKind if f"`{kind.value}`" not in section]


# -- walking the table with a running Nexus ------------------------------------------------------


@pytest.fixture(scope="module")
def nexus() -> Iterator[RunningServer]:
    backend = FakeBackend("a")
    with backend.running(), running_server(gateway_config(backend)) as server:
        yield server


JSON = {"Content-Type": "application/json"}
CASES: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/v1/chat/completions", b"{nope", 400, "invalid_json"),
    ("POST", "/v1/chat/completions", {"messages": []}, 400, "missing_model"),
    ("POST", "/v1/chat/completions", {"model": "fake-model"}, 400, "missing_required_parameter"),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "fake-model", "messages": "Hi"},
        400,
        "invalid_type",
    ),
    ("POST", "/v1/completions", {"model": "fake-model"}, 400, "missing_required_parameter"),
    ("POST", "/v1/completions", {"model": "fake-model", "prompt": 1}, 400, "invalid_type"),
    ("POST", "/v1/embeddings", {"model": "fake-model"}, 400, "missing_required_parameter"),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "nope", "messages": []},
        404,
        "model_not_found",
    ),
    ("GET", "/v1/nowhere", None, 404, "not_found"),
    ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    CASES,
    ids=[f"{case[0]} {case[1]} {case[4]}" for case in CASES],
)
def test_a_request_gets_the_status_and_code_of_its_row(
    nexus: RunningServer, method: str, path: str, body: Any, status: int, code: str
) -> None:
    content = body if isinstance(body, bytes) else None
    answer = httpx.request(
        method,
        nexus.url + path,
        headers=JSON,
        content=content,
        json=body if isinstance(body, dict) else None,
    )
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (status, code), error
    assert str(status) in " ".join(error_table()[code]), f"docs/api.md gives {code} another status"
