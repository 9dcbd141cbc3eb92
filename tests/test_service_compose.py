"""docker/compose.yaml, checked without a Docker engine (none runs where this was written): it validates against
the Compose Specification's JSON schema (tests/data/compose-spec.json, from compose-spec/compose-spec, Apache-2.0)
and keeps the promises the README makes of it — the five services, the GPU reservation, token-authenticated Ray on
every node, the server on PostgreSQL and S3 through the cluster, pinned images, settings from an env file. The
Dockerfiles it builds are linted by tests/test_docker.py (hadolint)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"


def _schema() -> dict:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)  # the schema file itself is a valid draft-07 schema
    return schema


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose):
    jsonschema.Draft7Validator(_schema()).validate(compose)


def test_the_schema_check_really_checks():
    """A compose file with faults fails: the check above cannot pass by accident."""
    validator = jsonschema.Draft7Validator(_schema())
    for bad in ({"services": {"s": {"image": "x", "restart": 3}}}, {"services": {"s": {"imagee": "x"}}},
                {"services": {"s": {"deploy": {"resources": {"reservations": {"devices": "gpu"}}}}}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_the_services_the_issue_asks_for(compose):
    services = compose["services"]
    assert {"server", "ray-head", "gpu-worker", "postgres", "minio"} <= set(services)
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] == 1
    assert "--num-gpus" in services["gpu-worker"]["command"]
    assert services["gpu-worker"]["command"][:3] == ["start", "--address", "ray-head:6379"]
    assert "--head" in services["ray-head"]["command"]
    server = services["server"]
    command = " ".join(server["command"])
    assert "--ray-address ray-head:6379" in command and "--host 0.0.0.0" in command
    env = server["environment"]
    assert env["COMPRESSOR_DB"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["COMPRESSOR_DB"]
    assert env["COMPRESSOR_ARTIFACTS"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert server["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert server["depends_on"]["buckets"] == {"condition": "service_completed_successfully"}


def test_every_ray_process_uses_the_clusters_token(compose):
    for name in ("server", "ray-head", "gpu-worker"):
        env = compose["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN")


def test_images_are_pinned_and_built_with_the_service(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["dockerfile"]).is_file() and build["args"]["EXTRAS"] == "[service]", name
            assert build["context"] == ".."
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), image
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text(encoding="utf-8")
        assert 'ARG EXTRAS=""' in text and 'pip install --no-cache-dir ".${EXTRAS}"' in text


def test_every_setting_it_reads_is_in_the_example_env_file():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text(encoding="utf-8")))
    example = (ROOT / "docker" / "compose.env.example").read_text(encoding="utf-8")
    given = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    assert used and used <= given, used - given
