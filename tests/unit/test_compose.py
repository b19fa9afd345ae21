"""docker-compose.yml cannot run here (no Docker engine); this checks what can be checked without one."""

import dataclasses
import re
import shlex
from pathlib import Path

import yaml

from recsim_stream.cli import COMMANDS
from recsim_stream.config import SECTIONS, Config, env_name, load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
RECSIM_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "recsim-stream:latest"}
KNOWN_ENV = {env_name(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))} | {
    "RECSIM_LOG_LEVEL"  # read by the CLI itself
}


def _programs(service: dict) -> list[list[str]]:
    """The commands a project-image container runs, each as its words (the image's entrypoint is
    recsim-stream; `sh -c LINE` runs LINE, split at ; and &&, with `exec` dropped)."""
    entrypoint, command = service.get("entrypoint", ["recsim-stream"]), service.get("command", [])
    if entrypoint == ["sh", "-c"]:
        parts = re.split(r";|&&", command[0])
        return [w[1:] if w[0] == "exec" else w for w in (shlex.split(p) for p in parts) if w]
    return [[*entrypoint, *command]]


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


def test_every_service_declares_the_ports_it_serves():
    for name, service in SERVICES.items():
        assert service.get("ports") or service.get("expose"), f"{name} declares neither ports nor expose"


def test_every_http_health_check_probes_a_port_its_service_declares():
    for name, service in SERVICES.items():
        declared = {str(p).split(":")[-1] for p in service.get("ports", [])} | set(service.get("expose", []))
        for port in re.findall(r"http://127\.0\.0\.1:(\d+)/", " ".join(service["healthcheck"]["test"])):
            assert port in declared, f"{name} probes port {port}, declares {sorted(declared)}"


def test_every_container_command_is_ray_or_a_real_recsim_stream_subcommand():
    for name, service in RECSIM_SERVICES.items():
        for words in _programs(service):
            program = Path(words[0]).name
            if program == "ray":
                assert words[1] in ("start", "status"), f"{name}: {words}"
            else:
                assert program == "recsim-stream" and words[1] in COMMANDS, f"{name}: {words}"


def test_the_updater_joins_the_ray_cluster_as_a_node_before_it_connects_as_a_driver():
    updater = SERVICES["updater"]
    programs = _programs(updater)
    assert programs[0][:3] == ["ray", "start", "--address=ray-head:6379"]
    assert programs[1] == ["recsim-stream", "train"]
    assert updater["environment"]["RECSIM_RAY_ADDRESS"] == "ray-head:6379"


def test_every_recsim_service_environment_is_valid_configuration():
    for name, service in RECSIM_SERVICES.items():
        env = service["environment"]
        assert sorted(set(env) - KNOWN_ENV) == [], name
        assert load_config(None, environ=env).kafka.bootstrap == "kafka:9092", name


def test_kafka_runs_in_kraft_mode_and_the_host_listener_is_the_published_one():
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "HOST://127.0.0.1:29092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert SERVICES["kafka"]["ports"] == ["127.0.0.1:29092:29092"]


def test_the_query_api_runs_two_replicas():
    assert SERVICES["api"]["deploy"]["replicas"] == 2
