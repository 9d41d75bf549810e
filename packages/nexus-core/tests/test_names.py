"""Backend names: one safe character set, whichever way a name comes in.

A name travels in ``X-Nexus-Backend``, log lines, metric labels and ``/admin/backends/{name}``;
names made from URLs and mDNS labels must be valid, and names saved by an older version in the
state store are renamed (from their URL) or refused, never restored as they were.
"""

from __future__ import annotations

import json
import logging

import pytest

from nexus_core.config import BACKEND_NAME, BackendConfig
from nexus_core.discovery import NAME_BASE_LENGTH, Announcement, MdnsDiscovery, backend_name
from nexus_core.discovery.mdns import _Service as Service
from nexus_core.gateway import BACKENDS_COLLECTION, Gateway, _name_from_url
from nexus_core.registry import Backend
from nexus_core.state import MemoryStore
from nexus_core.testing import FakeBackend


def valid(name: str) -> bool:
    return BACKEND_NAME.fullmatch(name) is not None


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://10.0.0.5:11434/v1", "10.0.0.5-11434"),
        ("http://[::1]:8000", "ip6-1-8000"),
        ("http://[fe80::1%25eth0]:11434", "ip6-fe80-1-25eth0-11434"),
        ("https://API.example.com", "api.example.com"),
        ("http://user:secret@gpu-box:8080", "gpu-box-8080"),
        ("http://_srv.local:1", "srv.local-1"),
    ],
)
def test_names_made_from_urls_are_valid(url: str, name: str) -> None:
    assert _name_from_url(url) == name
    assert BackendConfig(name=_name_from_url(url), url=url).name == name


def test_a_long_host_name_is_cut_and_keeps_a_digest_of_the_url() -> None:
    host = "a" * 60 + ".example.com"
    first = _name_from_url(f"http://{host}:1")
    second = _name_from_url(f"http://{host}:2")
    assert valid(first)
    assert valid(second)
    assert len(first) <= 64
    assert first != second


@pytest.mark.parametrize(
    "label",
    [
        "⒇" * 21,  # 63 bytes that NFKD turns into 84 characters: "(20)(20)..."
        "-._ leading punctuation",
        "x" * 63,
        "Küche/Rack\r\n\x1b[31m",
    ],
)
def test_names_made_from_mdns_labels_are_valid_with_every_suffix(label: str) -> None:
    base = backend_name(label)
    assert valid(base)
    assert len(base) <= NAME_BASE_LENGTH
    # Every candidate _name_for may give, when the better ones are taken, is valid too.
    discovery = MdnsDiscovery.__new__(MdnsDiscovery)
    discovery.gateway = Gateway({"discovery": {"enabled": False}})
    discovery._services = {}
    service = Service(instance=f"{label}._ollama._tcp.local.", service_type="_ollama._tcp.local.")
    announcement = Announcement(
        instance=service.instance,
        service_type=service.service_type,
        label=label,
        url="http://192.168.1.20:11434",
        type="ollama",
    )
    taken: set[str] = set()
    for _ in range(5):
        name = discovery._name_for(service, announcement)
        assert valid(name), name
        assert name not in taken
        taken.add(name)
        discovery.gateway.registry.add(_stub_backend(discovery.gateway, name))


def _stub_backend(gateway: Gateway, name: str) -> Backend:
    """A registry entry under ``name`` (never probed), so the next candidate is needed."""
    config = BackendConfig(name=name, url="http://192.168.1.20:11434", type="generic")
    return Backend(
        name=name,
        config=config,
        adapter=gateway.backend_types["generic"](config, gateway.clients),
        zone=config.zone_for(False),
        is_cloud=False,
    )


@pytest.mark.anyio
async def test_a_saved_backend_with_an_old_name_is_restored_under_its_url_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    async with FakeBackend("saved", ["m"]) as fake:
        old = f"--1]-{fake.port}/x"  # what an older version accepted (or made from a URL)
        await store.put(
            BACKENDS_COLLECTION,
            old,
            json.dumps({"name": old, "url": fake.url, "type": "generic"}),
        )
        with caplog.at_level(logging.WARNING, logger="nexus"):
            async with Gateway(
                {"discovery": {"enabled": False}, "health_check": {"interval_seconds": 3600}},
                state=store,
            ) as gateway:
                names = [backend.name for backend in gateway.registry]
                saved = await store.items(BACKENDS_COLLECTION)
    assert names == [f"127.0.0.1-{fake.port}"]
    assert list(saved) == [f"127.0.0.1-{fake.port}"]
    assert json.loads(saved[f"127.0.0.1-{fake.port}"])["url"] == fake.url
    assert any("restored as" in record.getMessage() for record in caplog.records)


@pytest.mark.anyio
async def test_a_saved_backend_that_cannot_be_read_is_refused_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    await store.put(BACKENDS_COLLECTION, "bad", json.dumps({"name": "bad", "url": "ftp://x"}))
    await store.put(BACKENDS_COLLECTION, "list", "[1, 2]")
    async with Gateway(
        {"discovery": {"enabled": False}, "health_check": {"interval_seconds": 3600}},
        state=store,
    ) as gateway:
        with caplog.at_level(logging.ERROR, logger="nexus"):
            await gateway.sync_backends()
            await gateway.sync_backends()
        assert list(gateway.registry) == []
    refused = [r.getMessage() for r in caplog.records if "is refused" in r.getMessage()]
    assert len(refused) == 2  # once each, however often the store is read again
    assert any("'bad'" in line and "url: " in line for line in refused)
    assert all("\n" not in line for line in refused)
