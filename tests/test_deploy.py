"""The deployment files, checked statically (no Docker engine, systemd or cluster here): the
Dockerfile, the compose file, the systemd unit and the Kubernetes manifests agree with each
other and with the daemon (its command line parses them, its config loader loads their
configs), and each keeps the promised hardening."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from monitor import cli
from monitor.config import load_config
from monitor.models import Config, HttpSettings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
#: Values for the `${NAME}`s of the example configs.
ENV = {
    "TELEGRAM_BOT_TOKEN": "123456789:AAFakeToken_for-tests_0123456789abcdef",
    "SMTP_PASSWORD": "smtp-password-for-tests",
    "POSTGRES_PASSWORD": "postgres-password-for-tests",
}
#: An exact release (`python:3.11.15-slim-bookworm`, `postgres:16.15-bookworm`), optionally
#: with its digest.
PINNED = re.compile(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?(-[a-z0-9.]+)*(@sha256:[0-9a-f]{64})?")
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|[a-z0-9]+-dev)\b")


# --- Dockerfile --------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str = ""
    #: (instruction, arguments) in order, continuation lines joined.
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.steps if ins == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"no {instruction} in stage {self.name or self.image}"
        return found[-1]


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        yield instruction.upper(), args.strip()
        logical = ""


def dockerfile_stages() -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, rest in instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            stages.append(Stage(image, name.strip()))
        else:
            stages[-1].steps.append((instruction, rest))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) instruction's words."""
    words = yaml.safe_load(args)
    assert isinstance(words, list), f"not in exec form: {args}"
    return [str(w) for w in words]


def image_command() -> list[str]:
    final = dockerfile_stages()[-1]
    return exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))


def run_args(command: list[str]) -> Any:
    """`monitor ...` as the daemon's own command line parses it."""
    assert command[0].endswith("monitor"), command
    args = cli._parser().parse_args(command[1:])
    assert args.command == "run"
    return args


def test_every_base_image_is_an_exact_release() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2  # a builder and the image
    for stage in stages:
        assert PINNED.fullmatch(stage.image), stage.image
        assert re.search(r":3\.11\.\d+-", stage.image)  # the exact patch release
        assert "latest" not in stage.image
        assert "-slim" in stage.image
    assert stages[-1].image == stages[0].image  # the virtualenv moves to the same interpreter


def test_the_image_runs_as_a_fixed_unprivileged_user() -> None:
    final = dockerfile_stages()[-1]
    user = final.last("USER")
    uid = user.partition(":")[0]
    assert uid not in ("root", "0")
    assert uid.isdigit()
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created
    # Nothing runs as root after the USER line.
    after = final.steps[final.steps.index(("USER", user)) :]
    assert not any(ins == "USER" and args.startswith(("root", "0")) for ins, args in after)


def test_the_final_image_has_no_build_tools_and_keeps_state_on_a_volume() -> None:
    builder, final = dockerfile_stages()[0], dockerfile_stages()[-1]
    for command in final.all("RUN"):
        assert not BUILD_TOOLS.search(command), command
    assert "build-essential" in " ".join(builder.all("RUN"))  # where compilers belong
    copied = final.all("COPY")
    assert copied == ["--from=builder /opt/monitor /opt/monitor"]  # the virtualenv only
    assert exec_form(final.last("VOLUME")) == ["/var/lib/monitor"]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert final.last("STOPSIGNAL") == "SIGTERM"
    # pip keeps no cache in a layer.
    builder_env = " ".join(builder.all("ENV"))
    for command in builder.all("RUN"):
        if "pip install" in command or "pip wheel" in command:
            assert "--no-cache-dir" in command or "PIP_NO_CACHE_DIR=1" in builder_env


def test_the_command_serves_health_where_the_healthcheck_looks() -> None:
    final = dockerfile_stages()[-1]
    args = run_args(image_command())
    assert args.config == "/config/monitor.yaml"
    http: HttpSettings = args.http
    assert http.host == "0.0.0.0"  # reachable from outside the container
    assert final.last("EXPOSE") == str(http.port)
    check = final.last("HEALTHCHECK")
    assert check.startswith("--interval=")
    probe = exec_form(check.partition(" CMD ")[2])
    assert probe[:2] == ["python", "-c"]  # no curl in a slim image
    assert f"http://127.0.0.1:{http.port}/healthz" in probe[2]
    compile(probe[2], "<healthcheck>", "exec")


def test_the_build_copies_only_files_that_exist_and_are_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= ignored
    for stage in dockerfile_stages()[:-1]:
        for copy in stage.all("COPY"):
            *sources, _target = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source


def dependency_closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """`name`'s runtime dependencies, transitively, as installed here (canonical names)."""
    found: set[str] = set()

    def visit(dist: str, wanted: tuple[str, ...]) -> None:
        for spec in distribution(dist).requires or []:
            req = Requirement(spec)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted or ("",)):
                continue
            key = canonicalize_name(req.name)
            if key not in found or req.extras:
                found.add(key)
                visit(req.name, tuple(req.extras))

    visit(name, extras)
    return found


def test_the_image_pins_every_runtime_dependency_within_its_range() -> None:
    pins: dict[str, str] = {}
    for line in (DEPLOY / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is not pinned in deploy/requirements.txt"
        assert req.specifier.contains(pins[key], prereleases=True), (spec, pins[key])
    missing = dependency_closure("monitor") - set(pins)
    assert not missing, f"dependencies missing from deploy/requirements.txt: {sorted(missing)}"
    for line in (DEPLOY / "build-constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, line


# --- docker compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def default_of(value: str) -> str:
    """`${NAME:-default}` -> default (what compose uses when NAME is not set)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_builds_the_image_and_mounts_what_it_expects() -> None:
    service = compose()["services"]["monitor"]
    context = (DEPLOY / service["build"]["context"]).resolve()
    assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
    assert context == ROOT
    args = run_args(["monitor", *service["command"]])
    assert ["monitor", *service["command"]] == image_command()  # the image's, spelled out
    mounts = {}
    for volume in service["volumes"]:
        source, target, *mode = default_of(volume).split(":")
        mounts[target] = (source, mode)
    source, mode = mounts[args.config]
    assert mode == ["ro"]  # the config is mounted read-only
    assert (DEPLOY / source).is_file()  # the default config, relative to this directory
    state, _ = mounts["/var/lib/monitor"]  # the image's VOLUME, on a named volume
    assert state in compose()["volumes"]
    published = [p.rsplit(":", 1)[-1] for p in service["ports"]]
    assert str(args.http.port) in published
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert "no-new-privileges:true" in service["security_opt"]
    assert service["cap_drop"] == ["ALL"]


def test_compose_offers_postgres_behind_a_profile() -> None:
    data = compose()
    postgres = data["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert PINNED.fullmatch(postgres["image"]), postgres["image"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")
    assert volume == ["postgres", "/var/lib/postgresql/data"]
    assert "postgres" in data["volumes"]
    needs = data["services"]["monitor"]["depends_on"]["postgres"]
    assert needs == {"condition": "service_healthy", "required": False}
    # The postgres example config reaches this service under its name, as its user and db.
    config = load_config(DEPLOY / "config" / "monitor-postgres.yaml", ENV)
    env = postgres["environment"]
    assert config.state.startswith(
        f"postgresql://{env['POSTGRES_USER']}:{ENV['POSTGRES_PASSWORD']}@postgres:5432/"
    )
    assert config.state.endswith("/" + env["POSTGRES_DB"])
    assert "POSTGRES_PASSWORD" in data["services"]["monitor"]["environment"]


# --- the example configs -----------------------------------------------------------------------


def k8s_config(tmp_path: Path) -> Config:
    configmap = manifests()["ConfigMap"]
    path = tmp_path / "monitor.yaml"
    path.write_text(configmap["data"]["monitor.yaml"], encoding="utf-8")
    return load_config(path, ENV)


def test_the_example_configs_load_and_keep_state_on_the_volume(tmp_path: Path) -> None:
    configs = [load_config(DEPLOY / "config" / "monitor.yaml", ENV), k8s_config(tmp_path)]
    for config in configs:
        assert config.state == "sqlite:///var/lib/monitor/state.db"
        assert config.feeds
        assert config.rules
        for channel in config.channels:
            path = channel.options.get("path")
            assert path is None or str(path).startswith("/var/lib/monitor/")


def test_every_channel_commented_out_in_the_examples_is_valid_once_uncommented(
    tmp_path: Path,
) -> None:
    text = (DEPLOY / "config" / "monitor.yaml").read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^  # ", "  ", text)
    path = tmp_path / "monitor.yaml"
    path.write_text(uncommented, encoding="utf-8")
    config = load_config(path, ENV)
    assert {c.type for c in config.channels} == {"console", "telegram", "email", "jsonl"}
    assert set(ENV.values()) - {ENV["POSTGRES_PASSWORD"]} <= config.secrets


# --- systemd -----------------------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    """The unit's settings: key -> every value given (some keys repeat)."""
    settings: dict[str, list[str]] = {}
    text = (DEPLOY / "systemd" / "monitor.service").read_text(encoding="utf-8")
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_is_hardened() -> None:
    u = unit()
    assert u.get("DynamicUser") == ["yes"] or u.get("User", ["root"])[0] not in ("root", "0")
    expected = {
        "StateDirectory": "monitor",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "RestrictNamespaces": "yes",
    }
    for key, value in expected.items():
        assert u.get(key) == [value], key
    assert set(u["RestrictAddressFamilies"][0].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in u["SystemCallFilter"]
    assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the daemon reloads on SIGHUP
    assert u["EnvironmentFile"][0].lstrip("-").startswith("/etc/monitor/")
    assert u["RestartPreventExitStatus"] == ["2"]  # an invalid config


def test_the_systemd_unit_runs_the_daemon_on_its_state_directory() -> None:
    u = unit()
    args = run_args(shlex.split(u["ExecStart"][0]))
    config = PurePosixPath(args.config)
    assert config.parent == PurePosixPath("/etc", u["ConfigurationDirectory"][0])
    assert args.http.host == "127.0.0.1"  # this machine only
    assert u["WorkingDirectory"] == [f"/var/lib/{u['StateDirectory'][0]}"]


# --- Kubernetes --------------------------------------------------------------------------------


def manifests() -> Mapping[str, dict[str, Any]]:
    """The kustomization's resources by kind (one of each)."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text("utf-8"))
    found: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text(encoding="utf-8")):
            assert doc["kind"] not in found, doc["kind"]
            found[doc["kind"]] = doc
    return found


def test_the_deployment_runs_one_replica_without_overlap() -> None:
    spec = manifests()["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # SQLite: never two pods on the state
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    service = manifests()["Service"]["spec"]
    assert service["selector"].items() <= labels.items()


def test_the_pod_is_locked_down_as_the_images_user() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    uid = dockerfile_stages()[-1].last("USER").partition(":")[0]
    assert str(security["runAsUser"]) == uid
    assert str(security["fsGroup"]) == uid  # the state volume is writable by it
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_the_deployment_mounts_config_secrets_and_state_where_the_image_expects() -> None:
    found = manifests()
    pod = found["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = run_args(["monitor", *container["args"]])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The config: the ConfigMap's key, read-only, at the path the command names.
    config = PurePosixPath(args.config)
    mount = mounts[str(config.parent)]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # so ConfigMap updates reach the file (--watch-config)
    assert volumes[mount["name"]]["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    assert config.name in found["ConfigMap"]["data"]
    assert args.watch_config
    # The state: the image's VOLUME, on the PersistentVolumeClaim.
    state = volumes[mounts["/var/lib/monitor"]["name"]]
    claim = found["PersistentVolumeClaim"]
    assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # writable /tmp, read-only root
    # The secrets: the Secret's keys become environment variables for `${NAME}`.
    (source,) = container["envFrom"]
    assert source["secretRef"]["name"] == found["Secret"]["metadata"]["name"]
    assert set(found["Secret"]["stringData"]) == {"TELEGRAM_BOT_TOKEN", "SMTP_PASSWORD"}


def test_the_probes_ask_the_daemons_endpoint() -> None:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = run_args(["monitor", *container["args"]])
    (port,) = container["ports"]
    assert port["containerPort"] == args.http.port
    assert args.http.host == "0.0.0.0"
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", port["name"]),
        "livenessProbe": ("/healthz", port["name"]),
        "readinessProbe": ("/readyz", port["name"]),
    }


@pytest.mark.parametrize("name", ["Dockerfile", "deploy/docker-compose.yml"])
def test_deploy_files_hold_no_secret_values(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    assert not re.search(r"\d{6,}:AA[A-Za-z0-9_-]{20,}", text)  # no bot token
    assert not re.search(r"(?i)password\s*[:=]\s*['\"]?[A-Za-z0-9]{6,}", text)
