"""compose.yaml against the Compose Specification, and the topology the pipeline needs.

No Docker engine runs here, so the file is checked as data: valid by the schema, seven
services that each have a health check, wait for healthy dependencies, restart, run as a
non-root user, and start a module that exists in this project.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT.parent / "shared" / "compose-spec.schema.json"
SERVICES = {
    "api-gateway": ("api_gateway", 8000),
    "validator-service": ("validator_service", 8001),
    "descriptor-service": ("descriptor_service", 8002),
    "status-service": ("status_service", 8003),
    "uploader-service": ("uploader_service", 8004),
    "dimse-service": ("dimse_service", 8005),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_file_is_valid_by_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())  # ../shared beside the repo, as in CI
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(compose)


def test_redis_and_the_six_services_of_the_pipeline(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", *SERVICES}


def test_every_depends_on_names_a_real_service_and_waits_until_healthy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition == {"condition": "service_healthy"}, name
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        if name != "redis":
            assert "redis" in service["depends_on"], f"{name} must wait for Redis"


@pytest.mark.parametrize("name", [*SERVICES, "redis"])
def test_each_service_restarts_and_checks_its_health(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert service["restart"] == "unless-stopped"
    assert service["healthcheck"]["test"]


@pytest.mark.parametrize(("name", "module_port"), SERVICES.items())
def test_each_pipeline_service_runs_a_real_module_as_non_root_on_its_port(
    compose: dict[str, Any], name: str, module_port: tuple[str, int]
) -> None:
    module, port = module_port
    service = compose["services"][name]
    assert service["command"] == ["python", "-m", module]
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    assert not str(service["user"]).startswith("0"), "must not run as root"
    assert f"http://127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
    if name == "api-gateway":
        assert f"{port}:{port}" in service["ports"]
    elif name == "dimse-service":  # one listener; DICOM and DICOM TLS, on the host's loopback
        assert service["ports"] == ["127.0.0.1:11112:11112", "127.0.0.1:2762:2762"]
        assert str(port) in service["expose"]
        assert "replicas" not in service.get("deploy", {})
    else:  # a worker scales out: its replicas would collide on a published host port
        assert "ports" not in service
        assert str(port) in service["expose"]
        assert service["deploy"]["replicas"] >= 1


def test_uploads_and_archive_live_on_named_volumes_shared_by_the_workers(
    compose: dict[str, Any],
) -> None:
    assert {"uploads", "archive", "redis-data"} <= set(compose["volumes"])
    for name in SERVICES:
        mounts = compose["services"][name]["volumes"]
        assert "uploads:/data/uploads" in mounts
        assert "archive:/data/archive" in mounts


def test_redis_persists_its_data(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"]
    assert any(v.startswith("redis-data:") for v in redis["volumes"])


def test_dockerfile_installs_this_project_and_drops_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[${EXTRAS}]"' in dockerfile
    assert "\nUSER dicomflow" in dockerfile


def test_nothing_beyond_the_host_answers_without_a_credential(compose: dict[str, Any]) -> None:
    """Safe by default (issue 12): a port published on every address is the gateway's, with
    access control on; any other is published on loopback only (DIMSE: its AE allow-list and
    TLS are for the network a modality is on, opened on purpose)."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published = str(port)
            if name == "api-gateway":
                assert service["environment"]["ACCESS_CONTROL"] == "on"
            else:
                assert published.startswith("127.0.0.1:"), (name, published)
