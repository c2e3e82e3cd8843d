"""compose.yaml and the Dockerfile, parsed and held to each other, to the CLI and to the settings.

There is no Docker engine where the tests run, so nothing here builds or starts a container;
instead every cross-reference a `docker compose up` depends on is checked: services and their
commands, health checks and start-up order, ports, metrics ports and Prometheus scrape targets,
FLOWPROOF_* settings (loaded for real through flowproof.core.config), secrets, bind mounts, and the
image's user and entry point.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from flowproof.cli import app
from flowproof.core.config import Settings, known_env_names, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Each flowproof service and the command it runs (docs/design.md, "Command line").
FLOWPROOF_COMMANDS = {
    "migrate": ["db", "migrate"],
    "relay": ["relay"],
    "consumer-redis": ["consume", "--sink", "redis"],
    "consumer-kafka": ["consume", "--sink", "kafka"],
    "verifier": ["verify"],
}
LONG_RUNNING = ("relay", "consumer-redis", "consumer-kafka", "verifier")
# What each flowproof service talks to, so must find healthy before it starts.
REGISTRY = "schema-registry"
USES = {
    "migrate": {"postgres"},
    "relay": {"postgres", "redis", "kafka", REGISTRY},
    "consumer-redis": {"postgres", "redis", REGISTRY},
    "consumer-kafka": {"postgres", "kafka", REGISTRY},
    "verifier": {"postgres", "redis", "kafka", REGISTRY},
}
SERVICES = {"postgres", "redis", "kafka", REGISTRY, "prometheus", "grafana", *FLOWPROOF_COMMANDS}
SECRETS_DIR = PurePosixPath("/run/secrets")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str
    host_port: int
    container_port: int


def port_mappings(service: dict[str, Any]) -> list[PortMapping]:
    mappings = []
    for entry in service.get("ports", []):
        match = re.fullmatch(r"([0-9.]+):(\d+):(\d+)", str(entry))
        assert match, f"port {entry!r}: expected HOST_IP:HOST_PORT:CONTAINER_PORT"
        mappings.append(PortMapping(match[1], int(match[2]), int(match[3])))
    return mappings


def healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    command = " ".join(test[1:]) if isinstance(test, list) else test
    match = re.search(r"https?://[^'\"\s]+", command)
    assert match, f"no URL in health check {test}"
    return match.group(0)


def scrape_targets() -> dict[str, list[str]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


# --- services, commands, health checks, start-up order ----------------------------------------


def test_every_service_exists() -> None:
    assert set(services()) == SERVICES


@pytest.mark.parametrize("name", sorted(FLOWPROOF_COMMANDS))
def test_flowproof_services_run_real_commands_of_the_image(name: str) -> None:
    service = services()[name]
    assert service["command"] == FLOWPROOF_COMMANDS[name]
    assert service["build"] == {"context": ".", "dockerfile": DOCKERFILE.name}
    assert service["image"] == services()["relay"]["image"], "one image for every flowproof service"
    assert service.get("init") is True, f"{name}: SIGTERM must reach flowproof (init: true)"
    # The command line parses: the sub-command and its options exist in the CLI.
    result = CliRunner().invoke(app, [*service["command"], "--help"])
    assert result.exit_code == 0, result.output


def test_long_running_services_have_health_checks_and_migrate_runs_once() -> None:
    for name, service in services().items():
        if name == "migrate":
            assert service["restart"] == "no"
            assert service["healthcheck"] == {"disable": True}
            continue
        assert service.get("restart") == "unless-stopped", name
        check = service.get("healthcheck", {})
        assert not check.get("disable") and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_depends_on_conditions_are_consistent() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (long syntax)"
        for dependency, spec in depends.items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            target = all_services[dependency]
            condition = spec["condition"]
            if condition == "service_healthy":
                check = target.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which has no health check"
                )
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dependency} is not a one-shot"
            else:
                pytest.fail(f"{name}: depends_on {dependency} with condition {condition}")
    for name, uses in USES.items():
        depends = all_services[name]["depends_on"]
        for dependency in uses:
            assert depends.get(dependency) == {"condition": "service_healthy"}, (name, dependency)
        if name in LONG_RUNNING:
            assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
    assert all_services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_start_up_order_has_no_cycle() -> None:
    graph = {name: set(s.get("depends_on", {})) for name, s in services().items()}
    started: list[str] = []
    while graph:
        ready = sorted(name for name, deps in graph.items() if deps <= set(started))
        assert ready, f"depends_on cycle among {sorted(graph)}"
        started += ready
        for name in ready:
            del graph[name]
    assert started.index("migrate") < started.index("relay")


# --- ports, metrics and scrape targets --------------------------------------------------------


def test_host_ports_are_loopback_only_and_unique() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for mapping in port_mappings(service):
            assert mapping.host_ip == "127.0.0.1", f"{name} publishes on {mapping.host_ip}"
            assert mapping.host_port not in seen, f"{name} and {seen[mapping.host_port]} share it"
            seen[mapping.host_port] = name


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_metrics_port_health_check_and_scrape_target_agree(name: str) -> None:
    service = services()[name]
    env = environment(service)
    assert env["FLOWPROOF_METRICS_HOST"] == "0.0.0.0", f"{name} must listen beyond loopback"
    port = int(env["FLOWPROOF_METRICS_PORT"])
    assert [m.container_port for m in port_mappings(service)] == [port]
    url = healthcheck_url(service)
    assert url.startswith(f"http://127.0.0.1:{port}/"), url
    expected_path = "/healthz" if name == "verifier" else "/metrics"
    assert url.endswith(expected_path), url
    assert scrape_targets()[f"flowproof-{name}"] == [f"{name}:{port}"]


def test_every_scrape_target_is_a_compose_service_on_its_port() -> None:
    all_services = services()
    prometheus = all_services["prometheus"]
    for job, targets in scrape_targets().items():
        for target in targets:
            host, _, port = target.rpartition(":")
            if host == "localhost":
                assert job == "prometheus"
                assert f"--web.listen-address=:{port}" in prometheus["command"]
                continue
            assert host in all_services, f"{job} scrapes {host}, which compose.yaml lacks"
            assert environment(all_services[host])["FLOWPROOF_METRICS_PORT"] == port, target
    for name in ("prometheus", "grafana"):
        url = healthcheck_url(all_services[name])
        (mapping,) = port_mappings(all_services[name])
        assert url.startswith(f"http://127.0.0.1:{mapping.container_port}/"), url


def test_image_exposes_the_metrics_port() -> None:
    default = Settings.model_fields["metrics_port"].default
    ports = {int(environment(services()[name])["FLOWPROOF_METRICS_PORT"]) for name in LONG_RUNNING}
    assert instructions("EXPOSE") == [str(default)]
    assert ports == {default}


# --- settings and secrets ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLOWPROOF_COMMANDS))
def test_flowproof_settings_are_known_and_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service's FLOWPROOF_* variables load through the settings, secret files included."""
    service = services()[name]
    env = environment(service)
    flowproof_vars = {key: value for key, value in env.items() if key.startswith("FLOWPROOF_")}
    unknown = set(flowproof_vars) - known_env_names()
    assert not unknown, f"{name}: {sorted(unknown)} are not flowproof settings"
    secret_files = {s: (ROOT / spec["file"]) for s, spec in compose()["secrets"].items()}
    for key, value in {**image_env(), **flowproof_vars}.items():
        if value.startswith(f"{SECRETS_DIR}/"):
            secret = PurePosixPath(value).name
            assert secret in service.get("secrets", []), f"{name}: {key} needs secret {secret}"
            monkeypatch.setenv(key, str(secret_files[secret]))
        else:
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.metrics_host == "0.0.0.0"
    assert settings.database_url.get_secret_value().startswith("postgresql://")
    assert "@postgres:5432/" in settings.database_url.get_secret_value()
    assert settings.kafka_bootstrap_servers == "kafka:9092"


def test_the_schema_registry_is_the_devstacks_apicurio_and_every_service_uses_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = services()[REGISTRY]
    pom = (ROOT / "devstack" / "apicurio" / "pom.xml").read_text(encoding="utf-8")
    version = re.search(r"<apicurio.version>(.+)</apicurio.version>", pom)
    assert version is not None
    assert registry["image"] == f"apicurio/apicurio-registry:{version[1]}"
    health = " ".join(registry["healthcheck"]["test"])
    health_url = re.search(r"http://localhost:(\d+)(/\S*)", health)
    assert health_url is not None, health
    [mapping] = port_mappings(registry)
    assert mapping.container_port == int(health_url[1])
    for name in LONG_RUNNING:
        url = environment(services()[name])["FLOWPROOF_SCHEMA_REGISTRY_URL"]
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (REGISTRY, mapping.container_port), name
        # The health check asks the very API the services use.
        assert health_url[2].startswith(parts.path), (health_url[2], url)
        for key, value in environment(services()[name]).items():
            if key.startswith("FLOWPROOF_SCHEMA_REGISTRY_"):
                monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.schema_registry_url is not None
        assert settings.schema_registry_url.get_secret_value() == url


def test_secrets_referenced_exist() -> None:
    declared = compose()["secrets"]
    for name, spec in declared.items():
        path = ROOT / spec["file"]
        assert path.is_file(), f"secret {name}: {path} does not exist"
        lines = path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].strip(), f"secret {name} must be one non-empty line"
    for name, service in services().items():
        mounted = service.get("secrets", [])
        assert set(mounted) <= set(declared), f"{name} uses undeclared secrets"
        for key, value in environment(service).items():
            if value.startswith(f"{SECRETS_DIR}/"):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret path"
                assert PurePosixPath(value).name in mounted, f"{name}: {key} -> unmounted secret"
    database_url = (ROOT / declared["database_url"]["file"]).read_text().strip()
    password = (ROOT / declared["postgres_password"]["file"]).read_text().strip()
    assert f"flowproof:{password}@postgres:5432/flowproof" in database_url


def test_bind_mounts_and_named_volumes_exist() -> None:
    volumes = set(compose().get("volumes", {}))
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"


def test_prometheus_loads_the_config_and_rules_compose_mounts() -> None:
    prometheus = services()["prometheus"]
    mounts = bind_mounts(prometheus)
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = PurePosixPath(config_arg.split("=", 1)[1])
    assert mounts[str(config_path)] == PROMETHEUS_CONFIG.resolve()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    loaded: list[Path] = []
    for pattern in config["rule_files"]:
        in_container = config_path.parent / pattern
        mount = mounts[str(in_container.parent)]
        loaded += sorted(mount.glob(in_container.name))
    assert loaded == sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    assert loaded, "no alert rules reach the container"


def test_grafana_provisioning_mounts_exist_in_the_repository() -> None:
    mounts = bind_mounts(services()["grafana"])
    assert set(mounts) == {
        "/etc/grafana/provisioning/datasources",
        "/etc/grafana/provisioning/dashboards",
        "/etc/grafana/dashboards/flowproof",
    }
    for target, source in mounts.items():
        assert source.is_dir() and any(source.iterdir()), f"{target} <- {source} is empty"
        assert source.is_relative_to(ROOT / "deploy" / "grafana"), source


# --- the Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined, per stage."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def instructions(keyword: str, stage: int = -1) -> list[str]:
    return [args for kw, args in dockerfile_stages()[stage] if kw == keyword]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def ignored_by_dockerignore(path: str) -> bool:
    """Docker's rule, enough for an allow-list: the last pattern matching the path or a parent."""
    parts = path.split("/")
    result = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        if pattern.startswith("**/"):
            matched = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            matched = any(fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))
        if matched:
            result = not negate
    return result


def test_every_stage_is_python_3_11_slim() -> None:
    for stage in dockerfile_stages():
        keyword, arguments = stage[0]
        assert keyword == "FROM"
        assert arguments.split()[0] == "python:3.11-slim", arguments


def test_image_installs_the_package_and_runs_as_a_created_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    runs = [args for kw, args in final if kw == "RUN"]
    install = [i for i, (kw, args) in enumerate(final) if kw == "RUN" and "pip install" in args]
    assert install and "flowproof" in final[install[0]][1], "the runtime stage must install it"
    created = [r for r in runs if "useradd" in r]
    assert created, "the runtime stage creates no user"
    uid = re.search(r"--uid\s+(\d+)", created[0])
    name = created[0].split()[-1]
    assert uid and int(uid[1]) != 0 and name != "root"
    users = [(i, args) for i, (kw, args) in enumerate(final) if kw == "USER"]
    assert users, "the image never switches away from root"
    index, user = users[-1]
    who = user.split(":")[0]
    assert who in (name, uid[1]), f"USER {user} is not the user the image creates"
    assert index > install[0], "USER must come after the package is installed"


def test_entrypoint_is_the_flowproof_console_script() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert entrypoint == '["flowproof"]', "exec form, so signals reach flowproof"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["flowproof"] == "flowproof.cli:main"


def test_image_environment_uses_known_settings() -> None:
    env = image_env()
    flowproof_vars = {k for k in env if k.startswith("FLOWPROOF_")}
    assert flowproof_vars <= known_env_names()
    assert env.get("FLOWPROOF_METRICS_HOST") == "0.0.0.0"


def test_build_context_holds_the_package_and_nothing_secret() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The folders of every installed package (pyproject's package-dir mapping).
    packages = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied: set[str] = set()
    for stage in dockerfile_stages():
        for keyword, arguments in stage:
            if keyword == "COPY" and not arguments.startswith("--from"):
                *sources, _destination = shlex.split(arguments)
                copied.update(s.rstrip("/") for s in sources)
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        inside = f"{source}/__init__.py" if (ROOT / source).is_dir() else source
        assert not ignored_by_dockerignore(inside), f".dockerignore excludes {inside}"
    for private in (
        ".venv/bin/python",
        ".devstack/env",
        ".git/config",
        "deploy/secrets/database_url",
    ):
        assert ignored_by_dockerignore(private), f".dockerignore lets {private} into the image"
    assert ignored_by_dockerignore("flowproof/__pycache__/cli.cpython-311.pyc")
