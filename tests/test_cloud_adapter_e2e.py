"""A third-party cloud adapter is cloud because it says so (``is_cloud``), not by its type name.

A throw-away plugin distribution (a module and its ``*.dist-info`` with an entry point in the
group ``nexus``) is written to a temporary directory and put on the ``PYTHONPATH`` of a real
``nexus serve``. Its adapter type, ``acmecloud``, is on no list inside Nexus; it speaks the OpenAI
wire protocol to a ``FakeOpenAI`` that checks its key and records every request's headers. The
gateway must treat it as cloud all the same: zone ``open`` by default, ``api_key_env`` required,
``forward_client_auth`` refused, never reached by a ``restricted`` policy, never given the
client's ``Authorization``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest

from nexus_core.adapters import BackendStatus
from nexus_core.config import Zone
from nexus_core.errors import GatewayError
from nexus_core.gateway import Gateway
from nexus_core.http import HttpClients
from nexus_core.openai_wire import OpenAIWireAdapter
from nexus_core.testing import Behaviour, FakeBackend, FakeOpenAI, free_port
from nexus_core.testing.net import closed_port_url
from tests.conftest import NEXUS, nexus_serve

CLOUD_KEY = "sk-acme-0123456789abcdef"
CLIENT_KEY = "sk-client-fedcba9876543210"
KEY_ENV = "ACME_TEST_API_KEY"
HELLO: list[Any] = [{"role": "user", "content": "Hi"}]

PLUGIN_MODULE = '''
"""Acme Cloud: a hosted LLM API speaking the OpenAI wire protocol (a test's throw-away plugin)."""

from typing import ClassVar

from nexus_core import hookimpl
from nexus_core.openai_wire import OpenAIWireAdapter


class AcmeCloudAdapter(OpenAIWireAdapter):
    type_name: ClassVar[str] = "acmecloud"
    is_cloud: ClassVar[bool] = True

    @classmethod
    async def detect(cls, url, clients, api_key=None):
        return False  # a cloud API is configured by name, never claimed by probing


@hookimpl
def register_backends(register):
    register("acmecloud", AcmeCloudAdapter)
'''

NEXUS_TOML = """
[discovery]
enabled = false

[health_check]
interval_seconds = 3600

[state]
backend = "memory"

[[routing.policies]]
model_pattern = "secret-*"
privacy = "restricted"

[[backends]]
name = "acme"
url = "{acme}"
type = "acmecloud"
priority = 1
{acme_extra}

[[backends]]
name = "box"
url = "{box}"
type = "generic"
priority = 90
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed the way pip lays a distribution out: module plus ``.dist-info``."""
    site = tmp_path_factory.mktemp("acme-site")
    (site / "nexus_backend_acmecloud.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = site / "nexusgw_backend_acmecloud-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nexusgw-backend-acmecloud\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[nexus]\nacmecloud = nexus_backend_acmecloud\n")
    return site


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **extra}


@pytest.fixture
def fleet() -> Iterator[tuple[FakeOpenAI, FakeBackend]]:
    """The cloud (checks its key) and a local box, both serving ``secret-plans``."""
    acme = FakeOpenAI("acme", ["acme-large", "secret-plans"], api_key=CLOUD_KEY)
    box = FakeBackend("box", ["secret-plans"])
    with acme.running(), box.running():
        yield acme, box


def write_config(tmp_path: Path, acme: str, box: str, acme_extra: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(NEXUS_TOML.format(acme=acme, box=box, acme_extra=acme_extra))
    return path


def test_a_third_party_cloud_adapter_is_open_keyed_and_never_gets_restricted_requests(
    tmp_path: Path, plugin_site: Path, fleet: tuple[FakeOpenAI, FakeBackend]
) -> None:
    acme, box = fleet
    config = write_config(tmp_path, acme.url, box.url, f'api_key_env = "{KEY_ENV}"')
    env = plugin_env(plugin_site, **{KEY_ENV: CLOUD_KEY})
    with nexus_serve(config, env=env) as (_, url):
        backends = {b["name"]: b for b in httpx.get(url + "/admin/backends").json()["data"]}
        assert backends["acme"]["type"] == "acmecloud"
        assert (backends["acme"]["zone"], backends["acme"]["kind"]) == ("open", "cloud")
        assert (backends["box"]["zone"], backends["box"]["kind"]) == ("restricted", "local")
        assert backends["acme"]["status"] == "healthy"  # its probe carried its own key

        client = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)
        public = client.chat.completions.with_raw_response.create(
            model="acme-large", messages=HELLO
        )
        assert public.headers["x-nexus-backend"] == "acme"
        assert public.headers["x-nexus-backend-type"] == "cloud"
        assert public.headers["x-nexus-privacy-zone"] == "open"
        # The cloud is preferred (priority 1) and serves secret-plans, yet the restricted
        # policy keeps the request on the box...
        secret = client.chat.completions.with_raw_response.create(
            model="secret-plans", messages=HELLO
        )
        assert secret.headers["x-nexus-backend"] == "box"
        assert secret.headers["x-nexus-privacy-zone"] == "restricted"
        # ...and when the box fails, the request fails rather than go to the cloud.
        box.behave(Behaviour(status=500))
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="secret-plans", messages=HELLO)
        assert failed.value.status_code == 502
        assert failed.value.response.json()["error"]["code"] == "bad_gateway"

    assert [r.json["model"] for r in acme.inference_requests] == ["acme-large"]
    assert acme.inference_requests[0].headers["authorization"] == f"Bearer {CLOUD_KEY}"
    every_header = [v for r in acme.requests for v in r.headers.values()]
    assert not any(CLIENT_KEY in value for value in every_header)
    assert [r.json["model"] for r in box.inference_requests] == ["secret-plans"] * 2


def run_nexus(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    environment.update({"NEXUS_DISCOVERY": "false", **env})
    return subprocess.run(
        [NEXUS, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("acme_extra", "expected"),
    [
        pytest.param(
            "",
            "backends[0].api_key_env: required for the cloud type 'acmecloud': the name of the "
            "environment variable that holds its API key",
            id="no-api-key-env",
        ),
        pytest.param(
            f'api_key_env = "{KEY_ENV}"\nforward_client_auth = true',
            "backends[0].forward_client_auth: a cloud backend ('acmecloud') never receives the "
            "client's Authorization; it uses its api_key_env",
            id="forward-client-auth",
        ),
    ],
)
def test_serve_and_config_check_refuse_a_cloud_backend_breaking_the_rules(
    tmp_path: Path, plugin_site: Path, acme_extra: str, expected: str
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, "https://llm.acme.example", f"http://127.0.0.1:{port}", acme_extra
    )
    env = plugin_env(plugin_site, **{KEY_ENV: CLOUD_KEY})
    served = run_nexus(
        ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)], env
    )
    assert served.returncode == 1
    assert f"{config}: {expected}" in served.stderr.splitlines()
    assert "Traceback" not in served.stderr
    checked = run_nexus(["config", "check", str(config)], env)
    assert (checked.returncode, checked.stdout) == (1, "")
    assert checked.stderr.splitlines() == [f"{config}: {expected}"]
    # Without the plugin the type is unknown: the same commands say that instead.
    unknown = run_nexus(["config", "check", str(config)], {})
    assert unknown.returncode == 1
    assert "backends[0].type: unknown backend type 'acmecloud'" in unknown.stderr


def test_the_admin_api_refuses_a_cloud_backend_without_its_key(
    tmp_path: Path, plugin_site: Path, fleet: tuple[FakeOpenAI, FakeBackend]
) -> None:
    acme, box = fleet
    config = write_config(tmp_path, acme.url, box.url, f'api_key_env = "{KEY_ENV}"')
    env = plugin_env(plugin_site, **{KEY_ENV: CLOUD_KEY})
    with nexus_serve(config, env=env) as (_, url):
        # Another server than the configured acme's (the same URL would be a 409 first).
        refused = httpx.post(
            url + "/admin/backends",
            json={"name": "acme-2", "url": closed_port_url(), "type": "acmecloud"},
        )
        listed = [b["name"] for b in httpx.get(url + "/admin/backends").json()["data"]]
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("api_key_env", "invalid_backend")
    assert error["message"] == (
        "Invalid backend 'acme-2': api_key_env: required for the cloud type 'acmecloud': the "
        "name of the environment variable that holds its API key"
    )
    assert sorted(listed) == ["acme", "box"]


# --- the library, with the adapter handed over directly -----------------------------------------


class AcmeCloudAdapter(OpenAIWireAdapter):
    """The same kind of cloud adapter, registered in-process; it recognises any OpenAI server."""

    type_name: ClassVar[str] = "acmecloud"
    is_cloud: ClassVar[bool] = True

    @classmethod
    async def detect(cls, url: str, clients: HttpClients, api_key: str | None = None) -> bool:
        return await OpenAIWireAdapter.detect(url, clients, api_key)


def library_gateway() -> Gateway:
    return Gateway(
        {
            "discovery": {"enabled": False},
            "health_check": {"interval_seconds": 3600, "recovery_threshold": 1},
            "state": {"backend": "memory"},
        },
        backend_types={"generic": OpenAIWireAdapter, "acmecloud": AcmeCloudAdapter},
    )


@pytest.mark.anyio
async def test_gateway_add_backend_applies_the_adapters_cloud_rules() -> None:
    async with FakeBackend("acme", ["acme-large"]) as acme, library_gateway() as gateway:
        with pytest.raises(GatewayError) as no_key:
            await gateway.add_backend({"name": "a", "url": acme.url, "type": "acmecloud"})
        assert (no_key.value.status, no_key.value.param) == (400, "api_key_env")
        with pytest.raises(GatewayError) as forwarding:
            await gateway.add_backend(
                {
                    "name": "b",
                    "url": acme.url,
                    "type": "acmecloud",
                    "api_key_env": KEY_ENV,
                    "forward_client_auth": True,
                }
            )
        assert (forwarding.value.status, forwarding.value.param) == (400, "forward_client_auth")
        # Detected rather than named: the same rules (this adapter claims any OpenAI server).
        with pytest.raises(GatewayError) as detected:
            await gateway.add_backend({"name": "c", "url": acme.url})
        assert "cloud type 'acmecloud'" in detected.value.message
        assert len(gateway.registry) == 0
        keyed = await gateway.add_backend(
            {"name": "d", "url": acme.url, "type": "acmecloud", "api_key_env": KEY_ENV}
        )
        assert (keyed.zone, keyed.is_cloud, keyed.kind) == (Zone.OPEN, True, "cloud")


@pytest.mark.anyio
async def test_a_server_detected_later_as_an_unkeyed_cloud_is_not_routed() -> None:
    port = free_port()
    async with library_gateway() as gateway:
        # Down when added: typed generic (restricted) until it answers.
        backend = await gateway.add_backend({"name": "late", "url": f"http://127.0.0.1:{port}"})
        assert (backend.type_name, backend.zone) == ("generic", Zone.RESTRICTED)
        async with FakeBackend("late", ["m"], port=port):
            await gateway.health.check(backend)  # healthy: detection runs again
            for _ in range(200):
                if backend.status is BackendStatus.UNKNOWN:
                    break
                await asyncio.sleep(0.02)
        assert backend.status is BackendStatus.UNKNOWN
        assert backend.type_name == "generic"
        assert "api_key_env" in str(backend.last_error)
