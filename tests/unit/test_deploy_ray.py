"""deploy/ray/: the `ray up` file and the KubeRay manifest cannot be launched here (no cluster, no
Kubernetes); this checks what can be checked without one: they parse, cluster.yaml passes the checks
`ray up` runs before it touches a machine, the RayCluster has what KubeRay requires, the Ray version
is the pinned one, every command is a real one, and every file they mention exists."""

import dataclasses
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from recsim_stream.cli import COMMANDS
from recsim_stream.config import SECTIONS, Config, env_name, load_config

REPO = Path(__file__).resolve().parents[2]
RAY_DIR = REPO / "deploy" / "ray"
CLUSTER = yaml.safe_load((RAY_DIR / "cluster.yaml").read_text())
MANIFESTS = list(yaml.safe_load_all((RAY_DIR / "kuberay.yaml").read_text()))
RAY_CLUSTER = next(m for m in MANIFESTS if m["kind"] == "RayCluster")
UPDATER = next(m for m in MANIFESTS if m["kind"] == "Deployment")
RAY_SUBCOMMANDS = {"start", "stop", "status"}
KNOWN_ENV = {env_name(s, f.name) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))} | {
    "RECSIM_LOG_LEVEL"  # read by the CLI itself
}
# `recsim-stream X` written as a command (in backticks, after a path or exec, or opening a line), not prose.
COMMAND_MENTION = re.compile(r"(?:`|/|\bexec |^\s*)recsim-stream ([a-z][\w-]*)", re.MULTILINE)
# A repository path as the files write it: a/b/c.ext, name.ext, Dockerfile; not ~/x, URLs or /abs.
PATH_PATTERN = re.compile(
    r"(?<![\w~/.:-])(?:[\w.-]+/)*[\w-]+\.(?:ya?ml|py|md|toml|lock|json)\b|(?<![\w/])Dockerfile\b"
)


def _pinned_ray() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in dependencies if d.startswith("ray=="))


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["template"]["spec"]["containers"]


def _all_containers() -> list[dict]:
    groups = [RAY_CLUSTER["spec"]["headGroupSpec"], *RAY_CLUSTER["spec"]["workerGroupSpecs"], UPDATER["spec"]]
    return [c for group in groups for c in _containers(group)]


def _programs(shell: str) -> list[list[str]]:
    """Each simple command of a shell line (split at ; && ||) as its words, env assignments dropped."""
    commands = []
    for part in re.split(r";|&&|\|\|", shell):
        words = [w for w in shlex.split(part) if not re.match(r"^[A-Z_]+=", w)]
        if words:
            commands.append(words)
    return commands


def _command_problems(shell: str) -> list[str]:
    """What in ``shell`` is not `ray start|stop|status` or a real `recsim-stream` subcommand."""
    problems = []
    for words in _programs(shell):
        program = Path(words[0]).name
        if program == "ray" and (len(words) < 2 or words[1] not in RAY_SUBCOMMANDS):
            problems.append(" ".join(words))
        elif program == "recsim-stream" and (len(words) < 2 or words[1] not in COMMANDS):
            problems.append(" ".join(words))
        elif program not in ("ray", "recsim-stream", "ulimit", "exec", "cd"):
            problems.append(" ".join(words))
        elif program == "exec" and _command_problems(shlex.join(words[1:])):
            problems.append(" ".join(words))
    return problems


def _container_shell(container: dict) -> str:
    """The shell line a container runs: `sh -c LINE` or its command and args as words."""
    words = [*container.get("command", []), *container.get("args", [])]
    if words[:2] in (["sh", "-c"], ["bash", "-c"], ["/bin/bash", "-lc"]):
        return " ".join(words[2:])
    return shlex.join(words)


# -- cluster.yaml ------------------------------------------------------------------------------


def test_cluster_yaml_validates_against_the_schema_inside_the_installed_ray():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)


def test_cluster_yaml_passes_the_checks_ray_up_makes_before_launching():
    prepared = prepare_config(CLUSTER)  # fills the local provider's node type, checks head/worker ips
    validate_config(prepared)
    assert prepared["available_node_types"]["local.cluster.node"]["max_workers"] == 2


def test_cluster_yaml_uses_the_local_provider_with_placeholder_addresses():
    assert CLUSTER["provider"]["type"] == "local"
    assert CLUSTER["provider"]["head_ip"] == "HEAD_IP"
    assert CLUSTER["provider"]["worker_ips"] == ["WORKER_IP_1", "WORKER_IP_2"]
    assert CLUSTER["max_workers"] == len(CLUSTER["provider"]["worker_ips"])


def test_cluster_yaml_installs_the_locked_versions_on_every_node():
    install = next(c for c in CLUSTER["setup_commands"] if "pip install" in c)
    assert "-c ~/recsim-stream/requirements.lock" in install
    assert CLUSTER["file_mounts"] == {"~/recsim-stream": "."}


def test_cluster_yaml_start_commands_only_stop_and_start_ray():
    for shell in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]:
        assert _command_problems(shell) == [], shell
    starts = [w for s in CLUSTER["head_start_ray_commands"] for w in _programs(s) if w[1:2] == ["start"]]
    assert "--head" in starts[0]


# -- kuberay.yaml ------------------------------------------------------------------------------


def test_the_ray_cluster_has_the_fields_kuberay_requires():
    spec = RAY_CLUSTER["spec"]
    assert RAY_CLUSTER["apiVersion"] == "ray.io/v1"
    assert RAY_CLUSTER["metadata"]["name"] == "recsim"
    assert isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    assert [c["image"] for c in _containers(spec["headGroupSpec"])] == ["recsim-stream:latest"]
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["shards"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert isinstance(group["rayStartParams"], dict), group["groupName"]
        assert [c["image"] for c in _containers(group)] == ["recsim-stream:latest"]


def test_ray_start_params_are_strings_as_kuberay_reads_them():
    groups = [RAY_CLUSTER["spec"]["headGroupSpec"], *RAY_CLUSTER["spec"]["workerGroupSpecs"]]
    for group in groups:
        for key, value in group["rayStartParams"].items():
            assert isinstance(value, str), f"rayStartParams.{key} = {value!r}"


def test_every_container_runs_the_project_image():
    assert {c["image"] for c in _all_containers()} == {"recsim-stream:latest"}


def test_the_ray_version_everywhere_is_the_pinned_one():
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert _pinned_ray() == "2.60.0"
    assert f"ray=={_pinned_ray()}" in lock
    assert RAY_CLUSTER["spec"]["rayVersion"] == _pinned_ray()
    assert ray.__version__ == _pinned_ray()


def test_every_container_command_and_probe_is_ray_start_or_a_real_subcommand():
    for container in _all_containers():
        if "command" in container or "args" in container:
            assert _command_problems(_container_shell(container)) == [], container["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            if "exec" in container.get(probe, {}):
                assert _command_problems(shlex.join(container[probe]["exec"]["command"])) == [], container[
                    "name"
                ]


def test_ray_containers_keep_the_command_kuberay_generates():
    groups = [RAY_CLUSTER["spec"]["headGroupSpec"], *RAY_CLUSTER["spec"]["workerGroupSpecs"]]
    for container in (c for g in groups for c in _containers(g)):
        assert "command" not in container and "args" not in container, container["name"]


def test_the_updater_joins_the_cluster_at_the_head_service_it_names_in_recsim_ray_address():
    container = _containers(UPDATER["spec"])[0]
    env = {e["name"]: e["value"] for e in container["env"]}
    head = f"{RAY_CLUSTER['metadata']['name']}-head-svc:6379"
    programs = _programs(_container_shell(container))
    assert env["RECSIM_RAY_ADDRESS"] == head
    assert programs[0][:2] == ["ray", "start"] and f"--address={head}" in programs[0]
    assert programs[1] == ["exec", "recsim-stream", "train"]


def test_the_updater_environment_is_valid_configuration():
    env = {e["name"]: e["value"] for e in _containers(UPDATER["spec"])[0]["env"]}
    assert sorted(set(env) - KNOWN_ENV) == []
    config = load_config(None, environ=env)
    assert config.ray.address == "recsim-head-svc:6379"


def test_the_updater_mounts_the_volume_claims_the_manifest_defines():
    claims = {m["metadata"]["name"] for m in MANIFESTS if m["kind"] == "PersistentVolumeClaim"}
    volumes = UPDATER["spec"]["template"]["spec"]["volumes"]
    assert {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    } == claims


# -- all three files -----------------------------------------------------------------------------


def test_every_recsim_stream_command_the_files_mention_is_real():
    for name in ("cluster.yaml", "kuberay.yaml", "README.md"):
        for sub in COMMAND_MENTION.findall((RAY_DIR / name).read_text()):
            assert sub in COMMANDS, f"{name} mentions `recsim-stream {sub}`"


def test_every_file_path_the_files_mention_exists():
    for name in ("cluster.yaml", "kuberay.yaml", "README.md"):
        for path in PATH_PATTERN.findall((RAY_DIR / name).read_text()):
            assert (REPO / path).exists() or (RAY_DIR / path).exists(), f"{name} mentions {path}"
