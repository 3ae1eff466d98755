"""The command line: help everywhere, and user mistakes as one clear line (exit 2), never a traceback."""
import subprocess
import sys

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
