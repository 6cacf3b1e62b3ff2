"""The production compose stack: docker-compose.yml, Dockerfile, .env.example, config.

Checked statically (no Docker engine is needed). When the `docker compose` plugin is
installed, `docker compose config -q` also validates the file with Compose itself.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
PRODUCTION_CONFIG = ROOT / "config" / "production.toml"

SEARCH_ATTRIBUTES = {
    "LeverAccount": "Keyword",
    "LeverOpportunityId": "Keyword",
    "LeverStageId": "Keyword",
    "PyTest": "Keyword",
    "PyStatus": "Keyword",
    "PyVerdict": "Keyword",
    "PyScore": "Double",
}
SECRETS = {
    "PYLEVER_ADMIN_TOKEN",
    "PYLEVER_PAYLOAD_KEYS",
    "PY_API_KEY",
    "PY_CALLBACK_SECRET",
    "ACME_LEVER_API_KEY",
    "ACME_LEVER_STAGE_TOKEN",
    "ACME_LEVER_ARCHIVE_TOKEN",
    "POSTGRES_PASSWORD",
}
# Written by other engineers; while one is missing the test checks the name only.
PENDING_FILES = {"api.py", "worker.py", "cli.py", "README.md"}
# Where the api and worker containers see secret files ("file:" references).
SECRETS_DIR = "/run/secrets/py-lever"

# Every key of deploy/dynamicconfig/development-sql.yaml, each checked in
# temporalio/temporal common/dynamicconfig/constants.go (v1.30.1 .. v1.32): the server
# only logs a warning for a misspelt key and keeps its default.
DYNAMIC_CONFIG_KEYS = {
    "limit.maxIDLength",
    "matching.numTaskqueueReadPartitions",
    "matching.numTaskqueueWritePartitions",
    "matching.useNewMatcher",
    "matching.enableFairness",
    "matching.enableMigration",
}
# Constraints the task-queue settings above accept (namespace, task queue, task type).
TASK_QUEUE_CONSTRAINTS = {"namespace", "taskQueueName", "taskType"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f".env.example: not NAME=value: {line!r}"
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
        assert name not in values, f"{name} listed twice in .env.example"
        values[name] = value
    return values


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_text(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value is None:
            continue
        parts.append(value if isinstance(value, str) else " ".join(map(str, value)))
    return " ".join(parts)


def command_list(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def published_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["published"]))
        else:
            host_part = str(port).rsplit(":", 1)[0].split(":")[-1]
            ports.add(int(host_part))
    return ports


def duration_seconds(value: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    assert total, f"not a duration: {value!r}"
    return total


def find_service(services: dict, *, image_prefix: str, command_has: str) -> tuple[str, dict]:
    found = [
        (name, svc)
        for name, svc in services.items()
        if str(svc.get("image", "")).startswith(image_prefix) and command_has in command_text(svc)
    ]
    assert len(found) == 1, f"expected one {image_prefix} service running {command_has!r}"
    return found[0]


# --- services ---------------------------------------------------------------------


def test_services_exist(services):
    for name in ("postgresql", "temporal", "temporal-setup", "temporal-ui", "api", "worker"):
        assert name in services, name
    schema_name, _ = find_service(
        services, image_prefix="temporalio/admin-tools:", command_has="temporal-sql-tool"
    )
    assert schema_name == "temporal-admin-tools"


def test_images_are_pinned_and_temporal_images_match(services):
    tags = {}
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and tag and tag != "latest", f"{name}: image {image} is not pinned"
        tags.setdefault(repo, set()).add(tag)
    assert tags["postgres"] == {"16"}
    # server and admin-tools (schema files, CLI) are bumped together
    assert tags["temporalio/server"] == tags["temporalio/admin-tools"]
    assert len(tags["temporalio/server"]) == 1
    assert "temporalio/ui" in tags
    assert "temporalio/auto-setup" not in tags  # deprecated


def test_startup_order(services):
    def needs(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        return {k: v["condition"] for k, v in deps.items()} if isinstance(deps, dict) else {}

    assert needs("temporal-admin-tools") == {"postgresql": "service_healthy"}
    assert needs("temporal") == {"temporal-admin-tools": "service_completed_successfully"}
    assert needs("temporal-setup") == {"temporal": "service_healthy"}
    assert needs("temporal-ui") == {"temporal": "service_healthy"}
    for name in ("api", "worker"):
        assert needs(name) == {"temporal-setup": "service_completed_successfully"}
    for name in ("postgresql", "temporal", "api"):
        assert "healthcheck" in services[name], name


def test_postgresql(services):
    pg = services["postgresql"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volumes = pg.get("volumes") or []
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in volumes)
    assert "ports" not in pg  # only Temporal talks to it


def test_schema_setup_covers_both_databases(services):
    script = command_text(services["temporal-admin-tools"])
    sql_tool = [line for line in script.splitlines() if "temporal-sql-tool" in line]
    assert all("--plugin postgres12" in line for line in sql_tool)
    for db, schema in (("temporal", "temporal"), ("temporal_visibility", "visibility")):
        steps = [line for line in sql_tool if re.search(rf"--db {db}(\s|$)", line)]
        assert any(" create" in line for line in steps), db
        assert any("setup-schema -v 0.0" in line for line in steps), db
        update = [line for line in steps if "update-schema" in line]
        assert update and f"/etc/temporal/schema/postgresql/v12/{schema}/versioned" in update[0]
        assert "||" not in update[0], "update-schema failures must stop the setup"


def test_temporal_server(services):
    temporal = services["temporal"]
    env = environment(temporal)
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert env["DB_PORT"] == "5432"
    assert {"POSTGRES_USER", "POSTGRES_PWD"} <= set(env)
    path = env["DYNAMIC_CONFIG_FILE_PATH"]
    assert path == "/etc/temporal/config/dynamicconfig/development-sql.yaml"
    host_dir, options = bind_mounts(temporal)[str(Path(path).parent)]
    assert options == ["ro"]
    assert (host_dir / Path(path).name).resolve() == DYNAMIC_CONFIG_FILE


# --- Temporal dynamic config: one partition, task queue fairness ----------------------

DYNAMIC_CONFIG_FILE = ROOT / "deploy" / "dynamicconfig" / "development-sql.yaml"


@pytest.fixture(scope="module")
def dynamic_config() -> dict:
    return yaml.safe_load(DYNAMIC_CONFIG_FILE.read_text())


def dynamic_value(dynamic_config: dict, key: str, *, namespace: str, queue: str, type_: str):
    """The value the server uses for a task queue: the matching entry with the most
    constraints (Temporal's precedence: the most specific constraints win)."""
    filters = {"namespace": namespace, "taskQueueName": queue, "taskType": type_}
    matching = [
        entry
        for entry in dynamic_config.get(key) or []
        if all(filters[k] == v for k, v in (entry.get("constraints") or {}).items())
    ]
    if not matching:
        return None
    return max(matching, key=lambda e: len(e.get("constraints") or {}))["value"]


def py_lever_queues(services) -> set[str]:
    base = environment(services["worker"])["PYLEVER_TASK_QUEUE"]
    queues = {base, f"{base}-lever"}
    try:  # written in parallel: compare with the code when it says
        from workflows.decisions import lever_task_queue
    except ImportError:
        return queues
    assert lever_task_queue(base) == f"{base}-lever"
    return queues


def test_dynamic_config_keys_are_real(dynamic_config):
    assert set(dynamic_config) <= DYNAMIC_CONFIG_KEYS, sorted(
        set(dynamic_config) - DYNAMIC_CONFIG_KEYS
    )
    for key, entries in dynamic_config.items():
        assert isinstance(entries, list) and entries, key
        for entry in entries:
            assert set(entry) == {"value", "constraints"}, key
            assert set(entry["constraints"] or {}) <= TASK_QUEUE_CONSTRAINTS, key


@pytest.mark.parametrize(
    "key", ["matching.numTaskqueueReadPartitions", "matching.numTaskqueueWritePartitions"]
)
def test_py_levers_queues_have_one_partition(dynamic_config, services, key):
    # The per-key rate is divided by the read partitions, and fairness orders tasks
    # within one partition only: the Lever limit needs one partition (measured).
    namespace = environment(services["worker"])["TEMPORAL_NAMESPACE"]
    for queue in py_lever_queues(services):
        for type_ in ("Workflow", "Activity"):
            value = dynamic_value(
                dynamic_config, key, namespace=namespace, queue=queue, type_=type_
            )
            assert value == 1, f"{key} for {queue} ({type_}): {value}"


@pytest.mark.parametrize(
    "key", ["matching.useNewMatcher", "matching.enableFairness", "matching.enableMigration"]
)
def test_py_levers_queues_use_fairness(dynamic_config, services, key):
    # useNewMatcher: the only matcher that enforces per-fairness-key rate limits (default
    # false up to 1.30); enableFairness: weighted round-robin over the fairness keys
    # (default false); enableMigration: backlogs from before the switch still drain
    # (default false in 1.30).
    namespace = environment(services["worker"])["TEMPORAL_NAMESPACE"]
    for queue in py_lever_queues(services):
        for type_ in ("Workflow", "Activity"):
            value = dynamic_value(
                dynamic_config, key, namespace=namespace, queue=queue, type_=type_
            )
            assert value is True, f"{key} for {queue} ({type_}): {value}"


def test_temporal_server_supports_fairness_key_limits(services):
    # fairness weight overrides in UpdateTaskQueueConfig and the keys above: 1.30 or later
    tag = services["temporal"]["image"].rpartition(":")[2]
    major, minor = (int(part) for part in tag.split(".")[:2])
    assert (major, minor) >= (1, 30), tag


def test_namespace_has_explicit_retention(services):
    script = command_text(services["temporal-setup"])
    creates = [line for line in script.splitlines() if "namespace create" in line]
    assert creates and all("--namespace default" in line for line in creates)
    assert all(re.search(r"--retention \d+[hd]\b", line) for line in creates)


def test_search_attributes_registered_with_one_type_per_name(services):
    script = command_text(services["temporal-setup"])
    registered: dict[str, str] = {}
    for line in script.splitlines():
        if "search-attribute create" not in line:
            continue
        names = re.findall(r"--name[ =](\S+)", line)
        types = re.findall(r"--type[ =](\S+)", line)
        assert len(names) == len(types), f"each --name needs its own --type: {line.strip()}"
        pairs = re.findall(r"--name[ =](\S+)\s+--type[ =](\S+)", line)
        assert len(pairs) == len(names), f"--name and --type must alternate: {line.strip()}"
        assert "--namespace default" in line
        for name, type_ in pairs:
            assert name not in registered, f"{name} registered twice"
            registered[name] = type_
    assert registered == SEARCH_ATTRIBUTES


def test_search_attributes_match_the_code():
    # the worker registers the same keys at start (SPEC 1); compare with every
    # module-level SearchAttributeKey of pylever.contracts.search_attributes (written in parallel)
    module = pytest.importorskip("pylever.contracts.search_attributes")
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.common import SearchAttributeKey

    keys = {v.name: v for v in vars(module).values() if isinstance(v, SearchAttributeKey)}
    if not keys:
        pytest.skip("pylever.contracts.search_attributes defines no SearchAttributeKey yet")
    prefix = "INDEXED_VALUE_TYPE_"
    in_code = {
        name: IndexedValueType.Name(key.indexed_value_type).removeprefix(prefix).title()
        for name, key in keys.items()
    }
    assert in_code == SEARCH_ATTRIBUTES


def test_published_ports(services):
    assert published_ports(services["api"]) == {8000}
    assert published_ports(services["temporal-ui"]) == {8080}
    assert published_ports(services["temporal"]) == {7233}


def test_ui_points_at_the_api_codec_endpoint(services):
    env = environment(services["temporal-ui"])
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_CORS_ORIGINS"] == "http://localhost:8080"
    endpoint = env["TEMPORAL_CODEC_ENDPOINT"]
    api_port = published_ports(services["api"]).pop()
    assert endpoint == f"http://localhost:{api_port}/codec"
    # pylever.edge.codec_server serves <endpoint>/decode and <endpoint>/encode
    from pylever.edge.codec_server import CODEC_PATH

    assert endpoint.endswith(CODEC_PATH)
    # the UI refuses to pass an access token to an http endpoint: must stay off here
    assert env.get("TEMPORAL_CODEC_PASS_ACCESS_TOKEN", "false") == "false"
    # the API lets the UI's origin call the codec endpoint (browser CORS)
    api_origins = environment(services["api"])["PYLEVER_UI_ORIGINS"].split(",")
    assert "http://localhost:8080" in [o.strip() for o in api_origins]


def test_api_and_worker_run_the_repo_image(services):
    for name in ("api", "worker"):
        svc = services[name]
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context).resolve() == ROOT
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
        assert DOCKERFILE.is_file()
        env = environment(svc)
        assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["TEMPORAL_NAMESPACE"] == "default"
        assert env["PYLEVER_TASK_QUEUE"] == "py-lever"
        env_files = svc["env_file"]
        env_files = [env_files] if isinstance(env_files, str | dict) else env_files
        assert [f if isinstance(f, str) else f["path"] for f in env_files] == [".env"]
        assert svc.get("restart") == "unless-stopped"

    assert command_list(services["api"]) == [
        "python", "-m", "uvicorn", "api:app", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    assert command_list(services["worker"]) == ["python", "worker.py"]
    healthcheck = " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck


def test_entry_modules_exist():
    # api.py and worker.py are written by others in parallel: while one is missing,
    # only its name (checked in test_api_and_worker_run_the_repo_image) is asserted.
    for module in ("api.py", "worker.py"):
        if (ROOT / module).exists():
            assert (ROOT / module).is_file()
        else:
            assert module in PENDING_FILES


def bind_mounts(service: dict) -> dict[str, tuple[Path, list[str]]]:
    """container path -> (host path, options) of the service's short-syntax bind mounts."""
    mounts = {}
    for volume in service.get("volumes") or []:
        host, container, *options = str(volume).split(":")
        if host.startswith((".", "/")):
            mounts[container] = ((ROOT / host).resolve(), options)
    return mounts


def test_config_is_mounted_where_pylever_config_points(services):
    # The config's directory is mounted, not the file: an editor saves by writing a new
    # file and renaming it over the old one, and a single-file bind mount keeps showing
    # the old inode, so a reload (SIGHUP) would re-read the old config.
    for name in ("api", "worker"):
        svc = services[name]
        target = environment(svc)["PYLEVER_CONFIG"]
        mounts = bind_mounts(svc)
        assert target not in mounts, f"{name}: mount the config's directory, not the file"
        parent = str(Path(target).parent)
        assert parent in mounts, f"{name}: nothing mounted at {parent}"
        host_dir, options = mounts[parent]
        assert host_dir / Path(target).name == PRODUCTION_CONFIG
        assert options == ["ro"]


def test_secret_files_of_new_accounts_can_reach_the_containers(services):
    # .env reaches a container only when it is created: an account added by a reload
    # names its secrets as "file:" paths in a mounted directory (docs/operations.md)
    for name in ("api", "worker"):
        mounts = bind_mounts(services[name])
        assert mounts.get(SECRETS_DIR) == (ROOT / "secrets", ["ro"]), name
    config = tomllib.loads(PRODUCTION_CONFIG.read_text())
    for account in config["accounts"]:
        for ref in [account["lever_api_key"], *account["webhook_signature_tokens"]]:
            if ref.startswith("file:"):
                assert ref.removeprefix("file:").startswith(SECRETS_DIR + "/"), ref


def test_worker_scales_and_stops_gracefully(services):
    worker = services["worker"]
    assert not worker.get("ports")
    assert "container_name" not in worker  # would break --scale
    grace = duration_seconds(str(worker["stop_grace_period"]))
    assert grace > 45
    from pylever.temporal.workers import GRACEFUL_SHUTDOWN

    assert grace > GRACEFUL_SHUTDOWN.total_seconds()
    assert not any("container_name" in svc for svc in services.values())


# --- SIGHUP (config reload) -------------------------------------------------------------


def test_sighup_reaches_python(services):
    # `docker compose kill -s HUP api worker` signals PID 1 of each container: tini
    # (init: true) forwards it to python. A shell as PID 1 (a string command, `sh -c`, a
    # shell-form ENTRYPOINT/CMD) would not forward it.
    for name in ("api", "worker"):
        svc = services[name]
        assert svc.get("init") is True, f"{name}: init: true (tini forwards signals)"
        assert "entrypoint" not in svc, name
        assert isinstance(svc["command"], list), f"{name}: exec-form command"
        assert svc["command"][0] == "python", name
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM", name
    api = command_list(services["api"])
    # uvicorn's supervisor (--workers, --reload) would receive SIGHUP instead of the app
    assert not {"--workers", "--reload"} & set(api)
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    for kw, rest in final:
        if kw in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{kw} in shell form: a shell would be PID 1's child"
            assert not re.match(r'\[\s*"(/bin/)?(ba)?sh"', rest), f"{kw} runs a shell"


def imported_sources(entry: Path) -> str:
    """The entry module's text plus the pylever/activities/workflows modules it imports."""
    text = entry.read_text()
    sources = [text]
    for module in re.findall(
        r"^\s*(?:from|import)\s+((?:pylever|activities|workflows)[\w.]*)", text, re.M
    ):
        path = ROOT / Path(*module.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                sources.append(candidate.read_text())
    return "\n".join(sources)


def test_api_and_worker_catch_sighup():
    # SIGHUP's default action ends a process: both must install a handler (reload).
    missing = []
    for module in ("api.py", "worker.py"):
        path = ROOT / module
        if not path.exists():
            assert module in PENDING_FILES
            missing.append(module)
        elif not re.search(
            r"signal\.SIGHUP\b|^\s*from signal import .*\bSIGHUP\b", imported_sources(path), re.M
        ):
            missing.append(module)
    if missing:  # the reload is written in parallel (issue 12)
        pytest.skip(f"no SIGHUP handler yet in {', '.join(missing)}")


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile():
    instructions = dockerfile_instructions()
    stages = [rest for kw, rest in instructions if kw == "FROM"]
    assert stages and all(s.split()[0] == "python:3.11-slim" for s in stages)

    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")

    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "installs the project from pyproject.toml"
    assert "[dev]" not in runs and "requirements-dev" not in runs

    cmd = [rest for kw, rest in final if kw == "CMD"][-1]
    assert "api:app" in cmd
    # uvicorn's --http through its environment: the header timeout for the SPEC's command
    env = " ".join(rest for kw, rest in final if kw == "ENV")
    assert "UVICORN_HTTP=pylever.edge.http_server:TimedH11Protocol" in env

    for kw, rest in instructions:
        if kw != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            path = ROOT / source
            if source in PENDING_FILES and not path.exists():
                continue  # written by others in parallel
            assert path.exists(), f"Dockerfile copies {source}, which does not exist"

    # everything pyproject.toml says to install is copied into the build stage
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools_cfg = pyproject["tool"]["setuptools"]
    copied = {s.rstrip("/") for kw, rest in instructions if kw == "COPY" for s in rest.split()[:-1]}
    included = setuptools_cfg["packages"]["find"]["include"]
    for package in included:
        assert package.split(".")[0] in copied, f"package {package} not copied"
    # every package of the product is installed (a new sub-package is found, not listed)
    for init in ROOT.glob("*/**/__init__.py"):
        name = ".".join(init.parent.relative_to(ROOT).parts)
        if name.split(".")[0] in ("pylever", "workflows", "activities"):
            assert any(fnmatch.fnmatch(name, pattern) for pattern in included), name
    for module in setuptools_cfg.get("py-modules", []):
        assert f"{module}.py" in copied, f"module {module}.py not copied"
    if isinstance(pyproject["project"].get("readme"), str):
        assert pyproject["project"]["readme"] in copied


def test_dockerignore_keeps_secrets_and_dev_files_out():
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".data", "tests", ".git", ".env"):
        assert required in patterns, required


# --- environment ---------------------------------------------------------------------


def test_env_example_lists_the_secrets_with_placeholders():
    values = env_example()
    assert SECRETS <= set(values)
    for name, value in values.items():
        assert value, f"{name} has no placeholder"
        assert "replace" in value.lower() or "change" in value.lower(), (
            f"{name}: .env.example holds placeholders only"
        )


def test_env_example_payload_keys_placeholder_is_rejected():
    from pylever.temporal.codec import PayloadKeyError, parse_keys

    with pytest.raises(PayloadKeyError):
        parse_keys(env_example()["PYLEVER_PAYLOAD_KEYS"])


def test_every_env_ref_of_the_config_is_in_env_example():
    listed = set(env_example())

    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    config = tomllib.loads(PRODUCTION_CONFIG.read_text())
    refs = {s.removeprefix("env:") for s in strings(config) if s.startswith("env:")}
    assert refs, "config/production.toml refers to no env: secrets"
    assert refs <= listed, f"missing from .env.example: {sorted(refs - listed)}"


def test_every_compose_variable_is_in_env_example():
    text = COMPOSE_FILE.read_text()
    text = text.replace("$$", "")  # $$ is a literal $ for the container's shell
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    used |= set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used, "compose interpolates no variables"
    missing = used - set(env_example())
    assert not missing, f"compose uses variables not in .env.example: {sorted(missing)}"


def test_production_config_follows_the_spec():
    config = tomllib.loads(PRODUCTION_CONFIG.read_text())
    assert config["service"]["public_url"].startswith("https://")
    assert config["py"]["api_key"] == "env:PY_API_KEY"
    assert config["py"]["callback_secret"] == "env:PY_CALLBACK_SECRET"
    assert config["defaults"] == {"reminders": ["2d", "5d"], "expire_after": "7d"}
    [account] = config["accounts"]
    assert account["id"] == "acme"
    assert account["lever_api_key"] == "env:ACME_LEVER_API_KEY"
    assert account["webhook_signature_tokens"] == [
        "env:ACME_LEVER_STAGE_TOKEN",
        "env:ACME_LEVER_ARCHIVE_TOKEN",
    ]
    assert account["triggers"] and account["triggers"][0]["stage"]


def test_production_config_loads(monkeypatch):
    config_module = pytest.importorskip("pylever.config.file")
    if not hasattr(config_module, "load_config"):
        pytest.skip("pylever.config.file.load_config not written yet")
    for name, value in env_example().items():
        monkeypatch.setenv(name, value)
    config = config_module.load_config(PRODUCTION_CONFIG)
    assert [a.id for a in config.accounts] == ["acme"]


# --- Compose itself, when available ------------------------------------------------------


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="docker compose plugin not installed")
def test_docker_compose_config_validates(tmp_path):
    # `config` needs no engine; .env and the mounted files must exist, as in a deployment
    for name in ("docker-compose.yml", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    (tmp_path / "config").mkdir()
    shutil.copy(PRODUCTION_CONFIG, tmp_path / "config" / "production.toml")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(DOCKERFILE, tmp_path / "Dockerfile")
    result = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_production_image_ships_no_dev_tooling():
    """The sandboxes, the demo and the `make run` launcher are run from the repository:
    neither installed as a package nor copied into the image."""
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "sandbox" not in packages["packages"]
    assert "COPY sandbox" not in dockerfile
    assert {"sandbox", "tests", "bench", "secrets"} <= set(ignored)
