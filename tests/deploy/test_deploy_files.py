"""deploy/ and docs/deploy.md name only commands, options, ports, paths and settings that exist.

Every Containerfile, quadlet unit, systemd unit, env file and Kubernetes manifest is
parsed; every ``fdo ...`` command they run is resolved against the real CLI (and run
with ``--help``); every ``FDO_*`` variable is a field of the service's settings class (or
an environment variable the CLI reads); ports match the CLI defaults and HTTP paths are
routes of the service. The manifests are validated against the Kubernetes schemas and
the Containerfiles linted with hadolint when those tools are installed.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from fdo_cli.main import app
from manufacturer.settings import ManufacturerSettings
from owner.settings import OwnerSettings
from rendezvous.settings import RendezvousSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deploy.md"
SERVICES = ("manufacturer", "rendezvous", "owner")
PORTS = {"manufacturer": 8038, "rendezvous": 8041, "owner": 8043}
#: The admin plane's listener in every deployment (``serve --admin-port``).
ADMIN_PORTS = {"manufacturer": 9038, "rendezvous": 9041, "owner": 9043}
SETTINGS: dict[str, type[Any]] = {
    "MANUFACTURER": ManufacturerSettings,
    "RENDEZVOUS": RendezvousSettings,
    "OWNER": OwnerSettings,
}

CONTAINERFILES = sorted(DEPLOY.rglob("Containerfile*"))
UNITS = sorted([*DEPLOY.rglob("*.service"), *DEPLOY.rglob("*.container")])
QUADLETS = sorted(
    p for p in (DEPLOY / "quadlet").iterdir() if p.suffix in {".container", ".network", ".volume"}
)
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
ALL_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())

ROOT_CMD = typer.main.get_command(app)


# ------------------------------------------------------------------ parsing helpers


def joined_lines(path: Path) -> list[str]:
    """Lines with backslash continuations joined and comments dropped."""
    out: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (line.startswith("#") or line.startswith("--")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return [line for line in out if line]


def containerfile_instructions(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in joined_lines(path):
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(text)


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def unit_values(path: Path, section: str, key: str) -> list[str]:
    """Every value of ``key`` (systemd keys repeat; configparser keeps the last, so scan)."""
    values: list[str] = []
    current = None
    for line in joined_lines(path):
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.partition("=")[0].strip() == key:
            values.append(line.partition("=")[2].strip())
    return values


def manifest_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def pod_specs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path, doc in manifest_docs():
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        template = spec.get("template") if isinstance(spec, dict) else None
        if template:
            yield path, template["spec"]


def fdo_commands() -> list[tuple[str, list[str]]]:
    """Every ``fdo ...`` command line in deploy/ and docs/deploy.md, as argv after ``fdo``."""
    found: list[tuple[str, list[str]]] = []
    for path in CONTAINERFILES:
        instr = containerfile_instructions(path)
        entry = [exec_form(rest) for word, rest in instr if word == "ENTRYPOINT"]
        for word, rest in instr:
            if word == "CMD" and entry and entry[-1] == ["fdo"]:
                found.append((f"{path.name} CMD", exec_form(rest)))
    for path in UNITS:
        for key in ("ExecStart", "ExecStartPre", "ExecStartPost"):
            for value in unit_values(path, "Service", key):
                argv = shlex.split(value.lstrip("-@:+!"))
                if Path(argv[0]).name == "fdo":
                    found.append((f"{path.name} {key}", argv[1:]))
        for value in unit_values(path, "Container", "Exec"):
            found.append((f"{path.name} Exec", shlex.split(value)))  # after ENTRYPOINT ["fdo"]
    for path, spec in pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv and argv[0] == "fdo":
                found.append((f"{path.name} {container['name']}", argv[1:]))
    in_code = False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        text = line.split(" #")[0].strip().rstrip("\\").strip()
        if in_code and text.startswith("fdo "):
            found.append((f"deploy.md: {text}", shlex.split(text)[1:]))
    return found


def is_group(command: Any) -> bool:
    """Typer ships its own copy of click, so groups are recognised by their sub-commands."""
    return isinstance(getattr(command, "commands", None), dict)


def resolve(argv: list[str]) -> tuple[list[str], Any]:
    """The sub-command path and the click command that ``fdo argv...`` runs."""
    command: Any = ROOT_CMD
    path: list[str] = []
    for word in argv:
        if not is_group(command) or word.startswith("-"):
            break
        sub = command.commands.get(word)
        assert sub is not None, f"fdo {' '.join([*path, word])}: no such command"
        command = sub
        path.append(word)
    assert not is_group(command), f"fdo {' '.join(path)} needs a sub-command"
    return path, command


def cli_envvars() -> set[str]:
    names: set[str] = set()

    def walk(command: Any) -> None:
        for param in command.params:
            env = getattr(param, "envvar", None)
            if isinstance(env, str):
                names.add(env)
            elif env:
                names.update(env)
        if is_group(command):
            for sub in command.commands.values():
                walk(sub)

    walk(ROOT_CMD)
    return names


def serve_port_default(service: str) -> int:
    _, command = resolve([service, "serve"])
    port = next(p for p in command.params if p.name == "port")
    if isinstance(port.default, int):
        return port.default
    default = SETTINGS[service.upper()].model_fields["port"].default  # rendezvous: from settings
    assert isinstance(default, int)
    return default


# ------------------------------------------------------------------ the files exist


def test_expected_files_exist() -> None:
    for service in SERVICES:
        assert (DEPLOY / "containers" / f"Containerfile.{service}").is_file()
        assert (DEPLOY / "quadlet" / f"fdo-{service}.container").is_file()
        assert (DEPLOY / "quadlet" / f"fdo-{service}-migrate.container").is_file()
        assert (DEPLOY / "kubernetes" / f"{service}.yaml").is_file()
    assert (DEPLOY / "kubernetes" / "migrate.yaml").is_file()
    for name in ("fdo.network", "fdo-postgres.volume", "fdo-postgres.container"):
        assert (DEPLOY / "quadlet" / name).is_file()
    for name in (
        "fdo-device-di.service",
        "fdo-device-onboard.service",
        "fdo-device-report.service",
        "device.env",
        "Containerfile",
    ):
        assert (DEPLOY / "device" / name).is_file()
    assert DOC.is_file()


def test_every_file_parses() -> None:
    for path in CONTAINERFILES:
        words = {w for w, _ in containerfile_instructions(path)}
        assert "FROM" in words, path
    for path in [*UNITS, *QUADLETS]:
        assert unit(path).sections(), path
    kinds = [doc["kind"] for _, doc in manifest_docs()]
    assert kinds.count("Kustomization") == 1


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in MANIFESTS} - {"kustomization.yaml"}
    assert listed == present


# ------------------------------------------------------------------ commands


def test_commands_are_found() -> None:
    names = {" ".join(resolve(argv)[0]) for _, argv in fdo_commands()}
    for expected in (
        "manufacturer serve",
        "rendezvous serve",
        "owner serve",
        *(f"{service} db upgrade" for service in SERVICES),
        *(f"{service} db current" for service in SERVICES),
        "device di",
        "device onboard",
        "device report",
    ):
        assert expected in names


@pytest.mark.parametrize(("where", "argv"), fdo_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_fdo_command_exists_with_its_options(where: str, argv: list[str]) -> None:
    path, command = resolve(argv)
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    for word in argv[len(path) :]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{where}: fdo {' '.join(path)} has no option {word}"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: {result.output}"


def test_installed_fdo_runs_help() -> None:
    fdo = Path(sys.executable).parent / "fdo"
    if not fdo.exists():
        pytest.skip("the fdo script is not installed next to this interpreter")
    seen = {tuple(resolve(argv)[0]) for _, argv in fdo_commands()}
    for path in sorted(seen):
        done = subprocess.run([str(fdo), *path, "--help"], capture_output=True, timeout=60)  # noqa: S603
        assert done.returncode == 0, (path, done.stderr)


# ------------------------------------------------------------------ migrations first


def test_quadlets_migrate_before_serving() -> None:
    """fdo-<service>.service needs fdo-<service>-migrate.service: `db upgrade`, same settings."""
    for service in SERVICES:
        served = DEPLOY / "quadlet" / f"fdo-{service}.container"
        migrate = DEPLOY / "quadlet" / f"fdo-{service}-migrate.container"
        unit_name = f"fdo-{service}-migrate.service"
        for key in ("Requires", "After"):
            assert unit_name in " ".join(unit_values(served, "Unit", key)).split(), (served.name, key)
        assert unit_values(migrate, "Unit", "PartOf") == [f"fdo-{service}.service"]
        assert [shlex.split(v) for v in unit_values(migrate, "Container", "Exec")] == [
            [service, "db", "upgrade"]
        ]
        assert unit_values(migrate, "Service", "Type") == ["oneshot"]
        assert unit_values(migrate, "Service", "RemainAfterExit") == ["yes"]
        for key in ("Image", "Network", "EnvironmentFile", "Secret"):
            assert unit_values(migrate, "Container", key) == unit_values(served, "Container", key), key


def _database_env(container: dict[str, Any]) -> list[Any]:
    return [e for e in container.get("env", []) if e["name"].endswith("_DATABASE_URL")]


def test_kubernetes_migration_jobs_run_before_the_deployments() -> None:
    """A Job per service runs `db upgrade`; the Deployment's pods wait for head in an init container."""
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifest_docs() if "metadata" in doc}
    for service in SERVICES:
        deployment = docs["Deployment", f"fdo-{service}"]["spec"]["template"]["spec"]
        (served,) = deployment["containers"]
        (wait,) = deployment["initContainers"]
        job = docs["Job", f"fdo-{service}-migrate"]["spec"]["template"]["spec"]
        (migrate,) = job["containers"]
        assert migrate["command"] == ["fdo", service, "db", "upgrade"]
        assert wait["command"][:5] == ["fdo", service, "db", "current", "--wait"]
        for container in (migrate, wait):
            assert container["image"] == served["image"]
            assert _database_env(container) == _database_env(served) != []


# ------------------------------------------------------------------ settings


def fdo_env_names() -> list[tuple[Path, str]]:
    pattern = re.compile(r"\bFDO_[A-Z0-9_]+")
    return [(p, name) for p in [*ALL_FILES, DOC] for name in pattern.findall(p.read_text())]


def test_every_fdo_variable_is_a_setting() -> None:
    cli_env = cli_envvars()
    names = fdo_env_names()
    assert names
    for path, name in names:
        if name in cli_env:
            continue
        service, _, field = name.removeprefix("FDO_").partition("_")
        if not field:  # a prefix in prose, e.g. FDO_OWNER_...
            continue
        assert service in SETTINGS, f"{path.name}: {name} names no service"
        assert field.split("__")[0].lower() in SETTINGS[service].model_fields, (
            f"{path.name}: {name} is no setting"
        )


def test_env_files_load_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in SERVICES:
        path = DEPLOY / "quadlet" / f"{service}.env"
        for line in joined_lines(path):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
        SETTINGS[service.upper()]()  # parses every value (JSON keys, URL lists, numbers)


def test_configmaps_load_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, doc in manifest_docs():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].removeprefix("fdo-") in SERVICES:
            service = doc["metadata"]["name"].removeprefix("fdo-")
            for key, value in doc["data"].items():
                monkeypatch.setenv(key, str(value))
            SETTINGS[service.upper()]()


# ------------------------------------------------------------------ ports and paths


def _serves_split(argv: list[str], service: str) -> bool:
    """``argv`` (after ``fdo``) serves ``service`` with the device plane on its port and
    the admin plane on its admin port, listening on every address in the container."""
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    return (
        argv[:2] == [service, "serve"]
        and options.get("--port") == str(PORTS[service])
        and options.get("--admin-port") == str(ADMIN_PORTS[service])
        and options.get("--admin-host") == "0.0.0.0"  # noqa: S104 - inside the container
    )


def test_ports_match_cli_defaults() -> None:
    """Each service listens on its default port for devices and on its admin port for
    operators: the image exposes both; the quadlet publishes the device port and the admin
    port on the host's loopback only; Kubernetes has a device Service and an internal
    admin Service, and probes the device port."""
    for service in SERVICES:
        assert serve_port_default(service) == PORTS[service]
        port, admin = PORTS[service], ADMIN_PORTS[service]
        instr = containerfile_instructions(DEPLOY / "containers" / f"Containerfile.{service}")
        assert [rest for w, rest in instr if w == "EXPOSE"] == [f"{port} {admin}"]
        assert [_serves_split(exec_form(rest), service) for w, rest in instr if w == "CMD"][-1]
        healthcheck = " ".join(rest for w, rest in instr if w == "HEALTHCHECK")
        assert f"127.0.0.1:{port}/health" in healthcheck
        quadlet = DEPLOY / "quadlet" / f"fdo-{service}.container"
        published = unit_values(quadlet, "Container", "PublishPort")
        assert published == [f"{port}:{port}", f"127.0.0.1:{admin}:{admin}"]
        assert [
            _serves_split(shlex.split(v), service) for v in unit_values(quadlet, "Container", "Exec")
        ] == [True]
        assert f"127.0.0.1:{port}/health" in unit_values(quadlet, "Container", "HealthCmd")[0]
    services: dict[str, dict[str, Any]] = {}
    for path, doc in manifest_docs():
        name = doc.get("metadata", {}).get("name", "").removeprefix("fdo-")
        if doc["kind"] == "Service":
            services[name] = doc
        if doc["kind"] == "Deployment" and name in SERVICES:
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            ports = [(p["name"], p["containerPort"]) for p in container["ports"]]
            assert ports == [("device", PORTS[name]), ("admin", ADMIN_PORTS[name])], path
            assert _serves_split(container["command"][1:], name), path
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["port"] == "device", (path, probe)
    for service in SERVICES:
        device, admin = services[service]["spec"], services[f"{service}-admin"]["spec"]
        assert [(p["port"], p["targetPort"]) for p in device["ports"]] == [(PORTS[service], "device")]
        assert [(p["port"], p["targetPort"]) for p in admin["ports"]] == [(ADMIN_PORTS[service], "admin")]
        assert admin.get("type", "ClusterIP") == "ClusterIP"  # never reachable from outside the cluster


def routes(service: str) -> set[str]:
    """GET routes the service's app declares, with those of the shared
    :func:`fdo_server.service.service_app` when the app is built on it."""
    pattern = re.compile(r"\.get\(\s*\"(/[^\"]*)\"")
    source = (ROOT / service / "app.py").read_text()
    found = set(pattern.findall(source))
    if "service_app" in source:
        found |= shared_routes()
    return found


def shared_routes() -> set[str]:
    """The GET routes of an app made by ``service_app`` (built here, on an in-memory database)."""
    from fastapi.routing import APIRoute

    from fdo_server.service import open_database, service_app

    settings = RendezvousSettings(database_url="sqlite://")
    app = service_app("rendezvous", settings, open_database("rendezvous", settings.database_url), {})
    try:
        return {r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in (r.methods or ())}
    finally:
        app.state.database.dispose()


def test_probe_paths_are_routes() -> None:
    for path, doc in manifest_docs():
        if doc["kind"] != "Deployment":
            continue
        service = doc["metadata"]["name"].removeprefix("fdo-")
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{path.name}: no {probe}"
            assert container[probe]["httpGet"]["path"] in routes(service), path


def test_replicas() -> None:
    replicas = {
        doc["metadata"]["name"]: doc["spec"]["replicas"]
        for _, doc in manifest_docs()
        if doc["kind"] == "Deployment"
    }
    assert replicas["fdo-rendezvous"] == 2
    assert replicas["fdo-owner"] == 2


def test_containerfiles_copy_existing_paths_and_run_non_root() -> None:
    for path in CONTAINERFILES:
        instr = containerfile_instructions(path)
        for word, rest in instr:
            if word == "COPY" and "--from" not in rest:
                for source in exec_form(rest)[:-1]:
                    assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
        if path.parent.name == "containers":
            users = [rest for w, rest in instr if w == "USER"]
            assert users and users[-1] not in {"root", "0"}, path
            assert any(w == "HEALTHCHECK" for w, _ in instr), path


def test_device_units() -> None:
    onboard = DEPLOY / "device" / "fdo-device-onboard.service"
    report = DEPLOY / "device" / "fdo-device-report.service"
    assert "!/var/lib/fdo/onboarded" in unit_values(onboard, "Unit", "ConditionPathExists")
    assert unit_values(onboard, "Service", "Restart") == ["on-failure"]
    # Boot does not wait for onboarding; fdo itself writes the stamp once it succeeded.
    assert unit_values(onboard, "Service", "Type") == ["exec"]
    [start] = [shlex.split(v) for v in unit_values(onboard, "Service", "ExecStart")]
    assert start[start.index("--onboarded-file") + 1] == "/var/lib/fdo/onboarded"
    assert "fdo-device-onboard.service" in unit_values(report, "Unit", "After")[0]
    di = DEPLOY / "device" / "fdo-device-di.service"
    assert unit_values(di, "Unit", "Before") == ["fdo-device-onboard.service"]
    assert "!/etc/fdo/device.cred" in unit_values(di, "Unit", "ConditionPathExists")
    for path in (di, onboard, report):
        assert unit_values(path, "Service", "EnvironmentFile") == ["-/etc/fdo/device.env"]
    from device.apply import ASSIGNMENT_FILE

    state_dirs = [shlex.split(v) for v in unit_values(report, "Service", "ExecStart")]
    state_dir = state_dirs[0][state_dirs[0].index("--state-dir") + 1]
    assert f"{state_dir}/{ASSIGNMENT_FILE}" in unit_values(report, "Unit", "ConditionPathExists")
    bootc = (DEPLOY / "device" / "Containerfile").read_text()
    assert (
        "systemctl enable fdo-device-di.service fdo-device-onboard.service fdo-device-report.service" in bootc
    )
    assert "COPY deploy/device/device.env /etc/fdo/device.env" in bootc


# ------------------------------------------------------------------ external validators


def test_manifests_validate_against_kubernetes_schemas() -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed")
    files = [str(p) for p in MANIFESTS if p.name != "kustomization.yaml"]
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_containerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed")
    for path in CONTAINERFILES:
        done = subprocess.run([hadolint, str(path)], capture_output=True, text=True, timeout=120)  # noqa: S603
        assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"
