"""The deployable stack (Dockerfile, docker-compose.yml, deploy/), checked without Docker.

No engine runs here, so these tests check what can be checked from the files: the compose file
against the Compose Specification's JSON schema (vendored under fixtures/compose-spec/), every
command a service runs against what the image installs, the image's install step against the
README's (`make install`), and every setting a service passes against what the project reads.
"""

import json
import re
import shlex
import zipfile
from importlib import metadata, util
from itertools import pairwise
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from pe_assets.config import load_settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec" / "compose-spec.json"
PROJECT = "pe-analyzer"
IMAGE = "pe-analyzer:latest"
VENV = "/opt/venv"

# What each Debian package the Dockerfile may apt-install puts on PATH.
APT_BINARIES = {
    "openjdk-17-jre-headless": {"java"},
    "make": {"make"},
    "procps": {"ps", "pgrep", "pkill"},
    "curl": {"curl"},
    "gcc": {"gcc"},
    "libc6-dev": set(),  # the C library headers gcc needs; no executable
}
# On PATH in every python:3.11-slim image, before anything is installed.
BASE_IMAGE_BINARIES = {"python", "python3", "sh", "bash"}

# Spark's launcher takes a main class; each must be in the Spark jars pyspark ships.
SPARK_JAR_GLOB = "spark-core_*.jar"


# --- reading the files -------------------------------------------------------------------------


def read_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions() if name == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile("ENV"):
        for item in shlex.split(arguments):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def makefile_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target, following a `target: $(VAR)/file` indirection."""
    text = (REPO / "Makefile").read_text()
    rules: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            rules[current].append(line.strip())
        elif re.match(r"^[^\s#=]+\s*:(?!=)", line):
            name, _, prerequisites = line.partition(":")
            current = name.strip()
            rules[current] = [f"@prereq {p}" for p in prerequisites.split()]
        elif not line.strip().startswith("#"):
            current = None
    lines = []
    for entry in rules[target]:
        if entry.startswith("@prereq "):
            prerequisite = entry.removeprefix("@prereq ")
            if prerequisite in rules:
                lines += makefile_recipe(prerequisite)
        else:
            lines.append(entry)
    return lines


def own_image_services(compose: dict) -> dict[str, dict]:
    return {
        name: service for name, service in compose["services"].items()
        if service.get("image") == IMAGE or "build" in service
    }


def service_commands(service: dict) -> list[list[str]]:
    """The command and the healthcheck command of a service, as argument lists."""
    commands = []
    for value in (service.get("entrypoint"), service.get("command")):
        if value:
            commands.append(shlex.split(value) if isinstance(value, str) else list(value))
    test = service.get("healthcheck", {}).get("test")
    if test and test[0] in ("CMD", "CMD-SHELL"):
        commands.append(test[1:] if test[0] == "CMD" else shlex.split(test[1]))
    return commands


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    first = Path(path).parts[0]
    return any(Path(path).match(p) or first == p for p in patterns)


# --- what the image installs ---------------------------------------------------------------------


def makefile_extras() -> set[str]:
    """The extras `make install` asks pip for, e.g. {'test'} from `pip install -e '.[test]'`."""
    for line in makefile_recipe("install"):
        match = re.search(r"pip install .*-e\s+'?\.\[([^\]]*)\]'?", line)
        if match:
            return {extra.strip() for extra in match.group(1).split(",")}
    raise AssertionError("the Makefile's install recipe runs no `pip install -e '.[...]'`")


def dependency_closure(name: str, extras: set[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that `pip install name[extras]` pulls in, by name."""
    found: dict[str, metadata.Distribution] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(name, frozenset(extras))]
    while pending:
        dist_name, wanted = pending.pop()
        key = dist_name.lower().replace("_", "-")
        if (key, wanted) in visited:
            continue
        visited.add((key, wanted))
        dist = found.setdefault(key, metadata.distribution(dist_name))
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            environments = [{"extra": extra} for extra in wanted | {""}]
            if requirement.marker and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return found


def image_executables() -> dict[str, str]:
    """Every executable on the image's PATH that a service may run, with where it comes from."""
    executables = {name: "python:3.11-slim" for name in BASE_IMAGE_BINARIES}
    for run in dockerfile("RUN"):
        match = re.search(r"apt-get install ((?:-\S+\s+)*)([^&|;]+)", run)
        for package in match.group(2).split() if match else []:
            assert package in APT_BINARIES, f"add {package}'s binaries to APT_BINARIES"
            executables.update(dict.fromkeys(APT_BINARIES[package], f"apt {package}"))
    for key, dist in dependency_closure(PROJECT, makefile_extras()).items():
        for entry in dist.entry_points.select(group="console_scripts"):
            executables[entry.name] = f"{key} console script"
        for file in dist.files or []:
            # Scripts a package installs into the venv's bin/ (pyspark's spark-class).
            if file.parts[:1] == ("..",) and file.parent.name == "bin":
                executables[file.name] = f"{key} script"
    return executables


@pytest.fixture(scope="module")
def compose() -> dict:
    return read_compose()


@pytest.fixture(scope="module")
def executables() -> dict[str, str]:
    return image_executables()


# --- (1) the compose file is valid Compose ------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification(compose):
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_dependencies_name_services_with_the_checks_they_wait_for(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart", "no") == "no"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_warehouse_volume_is_shared_by_the_driver_and_the_executors(compose):
    warehouse = compose["services"]["user-code"]["environment"]["PE_WAREHOUSE_DIR"]
    for name in ("user-code", "daemon", "spark-worker"):
        mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"][name]["volumes"]}
        target = next((t for t in mounts if warehouse.startswith(t.rstrip("/") + "/")), None)
        assert target is not None, f"{name} does not mount {warehouse}"
        assert mounts[target] in compose["volumes"], f"{name}: {mounts[target]} is no named volume"


# --- (2) every command exists in the image ------------------------------------------------------


def test_every_service_command_is_installed_in_the_image(compose, executables):
    missing = []
    for name, service in own_image_services(compose).items():
        for command in service_commands(service):
            if command[0] not in executables:
                missing.append(f"{name}: {command[0]}")
    assert missing == [], f"not installed by the Dockerfile: {missing}"


def test_python_scripts_and_modules_of_services_ship_in_the_image(compose):
    for name, service in own_image_services(compose).items():
        for command in service_commands(service):
            if command[0] in ("python", "python3") and command[1].endswith(".py"):
                assert (REPO / command[1]).is_file(), f"{name}: {command[1]} is missing"
                assert not dockerignored(command[1]), f"{name}: {command[1]} is .dockerignored"
            for flag, value in pairwise(command):
                if flag in ("-m", "--module-name") and command[0] != "python":
                    assert util.find_spec(value) is not None, f"{name}: no module {value}"


def test_spark_services_start_classes_that_pyspark_ships(compose):
    jars = Path(util.find_spec("pyspark").origin).parent / "jars"
    core = next(jars.glob(SPARK_JAR_GLOB))
    with zipfile.ZipFile(core) as jar:
        classes = set(jar.namelist())
    launched = [
        command[1] for service in own_image_services(compose).values()
        for command in service_commands(service) if command[0] == "spark-class"
    ]
    assert len(launched) == 2
    for main_class in launched:
        assert main_class.replace(".", "/") + ".class" in classes


def test_spark_worker_joins_the_master_the_driver_uses(compose):
    services = compose["services"]
    master = services["user-code"]["environment"]["PE_SPARK_MASTER"]
    host, port = master.removeprefix("spark://").split(":")
    assert master in services["spark-worker"]["command"]
    command = services[host]["command"]
    assert command[command.index("--port") + 1] == port


# --- (3) the image installs the project the way the README does --------------------------------


def test_image_installs_the_project_with_make_install(executables):
    assert executables["make"].startswith("apt "), "make must be apt-installed before use"
    # setup.py builds the parser's C extension; without a compiler pip skips it silently.
    assert executables.get("gcc", "").startswith("apt "), "gcc must be apt-installed"
    runs = dockerfile("RUN")
    installs = [run for run in runs if re.search(r"\bmake install\b", run)]
    assert installs == [f"make install VENV={VENV}"]
    assert not any("pip install" in run for run in runs), "install through the Makefile only"
    assert any("-m venv $(VENV)" in line for line in makefile_recipe("install"))
    assert "test" in makefile_extras()

    # The sources (and the Makefile) are in the image before `make install` runs.
    order = [f"{name} {arguments}" for name, arguments in dockerfile_instructions()]
    assert order.index("COPY . .") < order.index(f"RUN make install VENV={VENV}")
    for needed in ("Makefile", "pyproject.toml", "setup.py", "pe_assets/__init__.py"):
        assert not dockerignored(needed), f"{needed} is .dockerignored"
    assert dockerfile_env()["PATH"].startswith(f"{VENV}/bin:")


def test_image_carries_the_dagster_instance_config():
    home = dockerfile_env()["DAGSTER_HOME"]
    copies = [arguments.split() for arguments in dockerfile("COPY")]
    sources = {source for source, destination in copies if destination.startswith(home)}
    assert sources == {"dagster.yaml"}
    assert (REPO / "dagster.yaml").is_file()


# --- (4) settings passed to services are ones the project reads ----------------------------------


def _env_names_in(value) -> set[str]:
    """The variables a Dagster config refers to with `{env: NAME}`."""
    if isinstance(value, dict):
        names = {value["env"]} if set(value) == {"env"} else set()
        return names.union(*(_env_names_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_env_names_in(v) for v in value))
    return set()


def test_pe_settings_in_compose_are_read_by_the_project(compose):
    sources = "\n".join(p.read_text() for p in (REPO / "pe_assets").glob("*.py"))
    read = set(re.findall(r'"(PE_[A-Z0-9_]+)"', sources))
    for name, service in compose["services"].items():
        given = {key for key in service.get("environment", {}) if key.startswith("PE_")}
        assert given <= read, f"{name}: nothing in pe_assets/ reads {sorted(given - read)}"


def test_pe_settings_in_compose_pass_the_project_checks(compose):
    env = compose["services"]["user-code"]["environment"]
    settings = load_settings({k: str(v) for k, v in env.items()})
    assert settings.is_s3 and settings.s3_endpoint_url == env["PE_S3_ENDPOINT_URL"]
    assert not settings.spark_master.startswith("local")


def test_dagster_services_get_every_variable_dagster_yaml_reads(compose):
    needed = _env_names_in(yaml.safe_load((REPO / "dagster.yaml").read_text()))
    assert needed, "dagster.yaml reads no environment variables"
    dagster_services = {
        name: service for name, service in compose["services"].items()
        if service.get("command", [""])[0].startswith("dagster")
    }
    assert set(dagster_services) == {"user-code", "webserver", "daemon"}
    for name, service in dagster_services.items():
        given = {k for k in service["environment"] if k.startswith("DAGSTER_PG_")}
        assert given == needed, f"{name}: {sorted(given ^ needed)}"


def test_databases_match_what_postgres_creates(compose):
    from sqlalchemy.engine import make_url

    postgres = compose["services"]["postgres"]["environment"]
    user_code = compose["services"]["user-code"]["environment"]
    assert user_code["DAGSTER_PG_DB"] == postgres["POSTGRES_DB"]
    assert user_code["DAGSTER_PG_USER"] == postgres["POSTGRES_USER"]
    url = make_url(user_code["PE_DATABASE_URL"])
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    # A separate database: Dagster's storage and ours both keep an `alembic_version` table.
    assert url.database != postgres["POSTGRES_DB"]
    init = (REPO / "deploy" / "postgres" / "init.sql").read_text()
    assert f"CREATE DATABASE {url.database};" in init


# --- workspaces ----------------------------------------------------------------------------------


def _validated_workspace(path: Path) -> dict:
    # The validator `dagster dev -w` and the webserver run on a workspace file (private API).
    from dagster._core.workspace.config_schema import ensure_workspace_config

    return dict(ensure_workspace_config(yaml.safe_load(path.read_text()), str(path)))


def _tool_dagster() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]


def test_local_workspace_loads_the_module_pyproject_names():
    tool = _tool_dagster()
    (entry,) = _validated_workspace(REPO / "workspace.yaml")["load_from"]
    assert entry["python_module"] == {
        "module_name": tool["module_name"], "location_name": tool["code_location_name"],
    }


def test_docker_workspace_points_at_the_code_server_service(compose):
    tool = _tool_dagster()
    (entry,) = _validated_workspace(REPO / "deploy" / "workspace.docker.yaml")["load_from"]
    server = entry["grpc_server"]
    assert server["location_name"] == tool["code_location_name"]

    command = compose["services"][server["host"]]["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(server["port"])
    assert command[command.index("-h") + 1] == "0.0.0.0"
    assert command[command.index("-m") + 1] == tool["module_name"]
    assert command[command.index("--location-name") + 1] == tool["code_location_name"]
    for name in ("webserver", "daemon"):
        assert "deploy/workspace.docker.yaml" in compose["services"][name]["command"]
