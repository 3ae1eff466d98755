"""The lab-server deployment files: docker-compose.yml, Dockerfile, .env.example, cluster scripts.

No Docker engine is needed: the compose file is parsed with PyYAML and checked against the
project (services, healthchecks, GPU reservation, volumes, every ${VAR} defined in
.env.example, every command a real `scopeloop` subcommand). `docker compose config` runs as an
extra check where the compose CLI plugin is installed.
"""
from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SCOPELOOP_SERVICES = ("ml-backend", "gpu-worker", "cpu-worker")
VAR = re.compile(r"(?<!\$)\$\{(\w+)")  # ${NAME}, ${NAME:-default}; not the escaped $${NAME}


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f".env.example: bad line {line!r}"
            out[name] = value
    return out


def subcommands() -> dict:
    from scopeloop.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


def check_command(argv: list[str], where: str) -> None:
    """A command the deployment runs exists in the project (or is valid Python)."""
    if argv[0] == "scopeloop":
        parser, choices = subcommands()
        assert argv[1] in choices, f"{where}: `scopeloop {argv[1]}` is not a scopeloop subcommand"
        parser.parse_args(argv[1:])  # exits (SystemExit) on an unknown option
    elif argv[0] == "gunicorn":
        module, _, attr = argv[-1].partition(":")
        assert attr and hasattr(__import__(module, fromlist=[attr]), attr), f"{where}: {argv[-1]} not importable"
    elif argv[0] in ("python", "python3") and argv[1] == "-c":
        compile(argv[2], where, "exec")
    elif argv[0] not in ("CMD-SHELL", "redis-server", "redis-cli", "pg_isready"):
        raise AssertionError(f"{where}: unexpected command {argv}")


def test_services_and_images():
    assert {"db", "redis", "label-studio", *SCOPELOOP_SERVICES} <= set(SERVICES)
    assert SERVICES["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert SERVICES["db"]["image"] == "postgres:16"
    assert SERVICES["redis"]["image"] == "redis:7"
    for name in SCOPELOOP_SERVICES:
        assert SERVICES[name]["build"]["context"] == ".", name
        assert SERVICES[name]["user"], f"{name} must not run as root"
    assert SERVICES["cpu-worker"]["profiles"] == ["cpu"]
    assert "profiles" not in SERVICES["gpu-worker"]


def test_every_service_has_a_healthcheck_and_valid_commands():
    for name, svc in SERVICES.items():
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        check_command(test[1:] if test[0] == "CMD" else test, f"{name} healthcheck")
        if "command" in svc:
            check_command(svc["command"], f"{name} command")
    assert SERVICES["ml-backend"]["command"][:2] == ["scopeloop", "backend"]
    assert SERVICES["gpu-worker"]["command"][:2] == ["scopeloop", "worker"]
    assert SERVICES["cpu-worker"]["command"][:2] == ["scopeloop", "worker"]


def test_gpu_worker_reserves_a_gpu():
    devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in SERVICES["cpu-worker"]


def test_label_studio_reaches_the_backend_and_serves_local_files():
    env = SERVICES["label-studio"]["environment"]
    # SSRF protection on (issue 23); only the backend's fixed address is let through (no other
    # private or loopback address: LS 1.23's default list minus that one /32)
    from ml_backend.labelstudio.server import banned_subnets

    assert env["ML_BLOCK_LOCAL_IP"] == "true" and env["SSRF_PROTECTION_ENABLED"] == "true"
    backend_ip = SERVICES["ml-backend"]["networks"]["default"]["ipv4_address"]
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    assert ipaddress.ip_address(backend_ip) in ipaddress.ip_network(subnet)
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",") == banned_subnets([backend_ip])
    assert str(SERVICES["label-studio"]["group_add"][0]).startswith("${SCOPELOOP_GID")
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["DJANGO_DB"] == "default" and env["POSTGRE_HOST"] == "db"
    for key in ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_PORT", "LABEL_STUDIO_USER_TOKEN"):
        assert env[key], key
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert SERVICES["label-studio"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in SCOPELOOP_SERVICES:
        senv = SERVICES[name]["environment"]
        assert senv["SCOPELOOP_BACKEND_URL"] == "http://ml-backend:9090"
        assert senv["LABEL_STUDIO_URL"] == "http://label-studio:8080"
        assert senv["REDIS_URL"].endswith("@redis:6379/0")
        assert senv["LABEL_STUDIO_API_KEY"] == env["LABEL_STUDIO_USER_TOKEN"]
        assert senv["LOCAL_FILES_DOCUMENT_ROOT"] == env["LOCAL_FILES_DOCUMENT_ROOT"]
        assert senv["SCOPELOOP_UMASK"] == "027" and "SCOPELOOP_BACKEND_AUTH" not in senv  # auth stays on
        assert senv["SCOPELOOP_BACKEND_WEBHOOK_AUTH"].endswith(":-1}")
    assert "9090" in SERVICES["ml-backend"]["command"]


def test_volumes():
    declared = set(COMPOSE["volumes"])
    assert {"postgres-data", "redis-data"} <= declared
    mounts = {}
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                src, target, *mode = v.split(":")
                v = {"type": "volume" if not src.startswith(("/", ".", "$")) else "bind", "source": src,
                     "target": target, "read_only": mode == ["ro"]}
            if v["type"] == "volume":
                assert v["source"] in declared, f"{name}: volume {v['source']} is not declared"
            else:
                assert VAR.match(v["source"]), f"{name}: bind mount {v['source']} should come from .env"
                assert v["source"] == v["target"], f"{name}: shared folders keep their path (cluster workers)"
            mounts.setdefault(name, {})[v["source"]] = v
    ls = mounts["label-studio"]
    assert all(m["read_only"] for src, m in ls.items() if src.startswith("$")), "Label Studio only reads the folders"
    assert {"${IMAGES_DIR}", "${SCOPELOOP_HOME}"} <= set(ls)
    for name in SCOPELOOP_SERVICES:
        assert {"${IMAGES_DIR}", "${SCOPELOOP_HOME}", "${MODELS_DIR}"} <= set(mounts[name]), name
        assert mounts[name]["${IMAGES_DIR}"]["read_only"] and not mounts[name]["${SCOPELOOP_HOME}"].get("read_only")
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert any(str(v).endswith("/var/lib/postgresql/data") for v in SERVICES["db"]["volumes"])


def test_every_compose_variable_is_in_env_example_and_every_setting_is_used():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(VAR.findall(text))
    defined = env_example()
    assert used - set(defined) == set(), "used in docker-compose.yml but missing from .env.example"
    assert set(defined) - used - {"COMPOSE_PROFILES"} == set(), "in .env.example but not used by docker-compose.yml"


def test_env_example_documents_every_setting_the_code_reads():
    read = set()
    for pkg in ("scopeloop", "ml_backend", "trainer", "sampler", "label_config"):
        for py in (ROOT / pkg).rglob("*.py"):
            read |= set(re.findall(r"(?:environ\.get|getenv|_env|env_setting)\(\s*\"([A-Z][A-Z0-9_]+)\"", py.read_text()))
    example = (ROOT / ".env.example").read_text()
    scopeloop_env = set().union(*(SERVICES[n]["environment"] for n in SCOPELOOP_SERVICES))
    assert {v for v in read if v not in example} == set(), "settings the code reads, missing from .env.example"
    assert {v for v in read if v not in scopeloop_env} == set(), "settings the code reads, not passed by compose"


def test_env_example_comments_every_variable():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):  # a setting: a comment above it or above its group
            j = i - 1
            while j >= 0 and lines[j] and not lines[j].startswith("#"):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f".env.example line {i + 1} ({line}) has no comment above it"


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^ARG TORCH=", text, re.M) and ".[cpu]" in text and ".[gpu]" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in shlex.split(line)[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile COPY source {src} does not exist"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"
    cmd = re.findall(r"^CMD (.+)$", text, re.M)[-1]
    check_command(yaml.safe_load(cmd), "Dockerfile CMD")


def test_cluster_scripts():
    _, choices = subcommands()
    slurm = (ROOT / "scripts" / "slurm_worker.sh").read_text()
    for opt in ("--gres=gpu:1", "--time=", "--mem=", "--cpus-per-task=", "--requeue"):
        assert f"#SBATCH {opt}" in slurm, opt
    cron = (ROOT / "scripts" / "nightly_refresh.cron").read_text()
    assert "scripts/nightly_refresh.sh" in cron
    entries = [line for line in cron.splitlines() if line.strip() and not line.startswith("#")]
    assert entries and all(len(e.split()) > 5 for e in entries), "cron lines: 5 time fields, then the command"
    for script in ("slurm_worker.sh", "nightly_refresh.sh"):
        path = ROOT / "scripts" / script
        subprocess.run(["bash", "-n", str(path)], check=True)
        called = re.findall(r"^\s*(?:\S*\)\s*)?scopeloop (\w+)", path.read_text(), re.M)  # command lines
        assert called, script
        for sub in called:
            assert sub in choices, f"{script}: `scopeloop {sub}` is not a scopeloop subcommand"
    assert "scopeloop worker" in slurm and "scopeloop refresh --deep" in (ROOT / "scripts" / "nightly_refresh.sh").read_text()


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="docker compose CLI plugin not installed")
def test_docker_compose_config_accepts_the_file():
    res = subprocess.run([*_compose_cli(), "--env-file", ".env.example", "config", "--quiet"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*_compose_cli(), "--env-file", ".env.example", "--profile", "cpu", "config", "--services"],
                         cwd=ROOT, capture_output=True, text=True)
    assert set(res.stdout.split()) == set(SERVICES), res.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
