"""The command line: help everywhere, and user mistakes as one clear line (exit 2), never a traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from scopeloop.cli import build_parser, main

COMMANDS = ["train", "predict", "init", "demo", "worker", "refresh", "status", "backend", "export", "report"]


def test_every_subcommand_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0 and "usage: scopeloop " + cmd in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["status", "--project", "nope"], "no project 'nope'"),
    (["train", "--data", "/no/such/folder"], "is not a folder"),
    (["predict", "--input", "/no/such/folder", "--out", "x.csv"], "is not a folder of images"),
])
def test_user_errors_are_one_clear_line(tmp_path, argv, message):
    env = {"SCOPELOOP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "scopeloop.cli", *argv], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv", [["worker", "--burst"], ["demo", "--port", "1"], ["refresh", "--now"]])
def test_plain_install_names_the_extra_at_first_use(tmp_path, argv):
    """Issue 11, failure 10: without faiss (a plain `pip install .`), one line naming scopeloop[cpu]/[gpu]."""
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "faiss.py").write_text("raise ModuleNotFoundError(\"No module named 'faiss'\", name='faiss')\n")
    env = {"SCOPELOOP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(stub),
           "REDIS_URL": "redis://127.0.0.1:1/0"}
    r = subprocess.run([sys.executable, "-m", "scopeloop.cli", *argv], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "scopeloop[cpu]" in r.stderr and "scopeloop[gpu]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
