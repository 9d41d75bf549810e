"""What ``nexus advertise`` publishes: the service type, the TXT record, the DNS label."""

from __future__ import annotations

import pytest

from nexus_core.discovery import LLM_SERVICE, OLLAMA_SERVICE
from nexus_server.advertise import Advertisement


def test_an_ollama_advertisement_is_ollama_anything_else_is_llm() -> None:
    ollama = Advertisement(port=11434, type="ollama", name="Den")
    other = Advertisement(port=8080, type="llamacpp", api_path="v1/", models=("a", "b"))
    unknown = Advertisement(port=8080)
    assert ollama.service_type == OLLAMA_SERVICE
    assert other.service_type == LLM_SERVICE
    assert unknown.service_type == LLM_SERVICE
    assert ollama.txt() == {"type": "ollama"}
    assert other.txt() == {"type": "llamacpp", "api_path": "/v1", "models": "a,b"}
    assert unknown.txt() == {}
    info = ollama.service_info(["192.168.1.20"])
    assert (info.name, info.server, info.port) == ("Den._ollama._tcp.local.", "den.local.", 11434)
    assert info.parsed_addresses() == ["192.168.1.20"]
    assert info.properties == {b"type": b"ollama"}


def test_an_advertised_name_fits_a_dns_label() -> None:
    with pytest.raises(ValueError, match="63 bytes"):
        Advertisement(port=1, name="x" * 64).service_info(["192.168.1.20"])


@pytest.mark.parametrize(
    "name", ["ADVERTISED_TTL", "Advertisement", "Advertiser", "default_addresses"]
)
def test_the_old_discovery_path_still_answers_with_a_deprecation_warning(name: str) -> None:
    import nexus_core.discovery
    import nexus_server.advertise

    with pytest.warns(DeprecationWarning, match=f"moved to nexus_server.advertise.{name}"):
        found = getattr(nexus_core.discovery, name)
    assert found is getattr(nexus_server.advertise, name)


def test_the_discovery_package_knows_no_other_name() -> None:
    import nexus_core.discovery

    with pytest.raises(AttributeError):
        _ = nexus_core.discovery.Announcer  # type: ignore[attr-defined]
