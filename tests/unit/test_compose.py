"""docker-compose.yml cannot run here (no Docker engine); this checks what can be checked without one."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_service_has_an_image_or_a_build_and_a_health_check():
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        assert "test" in service.get("healthcheck", {}), name


def test_the_whole_system_is_there():
    assert {"kafka", "ray-head", "ray-worker", "updater", "api", "simulator", "prometheus", "grafana"} <= set(
        SERVICES
    )


def test_every_mounted_file_of_the_repository_exists():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_services_that_others_depend_on_exist_and_have_health_checks():
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, name


def test_published_ports_bind_to_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_application_services_reach_kafka_and_share_the_snapshot_volume():
    for name in ("updater", "api", "simulator"):
        env = SERVICES[name]["environment"]
        assert env["RECSIM_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["RECSIM_SNAPSHOT_DIR"] == "/data/snapshots", name
        assert "snapshots:/data/snapshots" in SERVICES[name]["volumes"], name
