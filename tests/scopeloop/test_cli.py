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


def test_output_piped_into_head_ends_without_a_traceback(monkeypatch, tmp_path, capsys):
    """`scopeloop status | head`: the reader closes the pipe; the command ends quietly (issue 22)."""
    from scopeloop import cli

    def closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setenv("SCOPELOOP_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "cmd_status", closed_pipe)
    assert cli.main(["status"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_readme_predict_line_finds_the_demo_projects_model(monkeypatch, tmp_path):
    """Issue 22, point 7: `scopeloop predict --input <folder> --out predictions.csv` as the README
    prints it failed after the demo ("'scopeloop-models' is neither a model folder ..."): without
    --model it takes ./scopeloop-models if there, else the only project's model in SCOPELOOP_HOME."""
    import json

    from scopeloop import cli
    from trainer.reports.batch_predict import resolve_model_dir
    from trainer.store.workspace import Workspace

    home = tmp_path / "home"
    monkeypatch.setenv("SCOPELOOP_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["predict", "--input", str(tmp_path), "--out", "p.csv"])
    with pytest.raises(cli.UserError, match="no model to predict with.*scopeloop train.*--model"):
        cli._predict_model(args)
    ws = Workspace(home / "projects" / "demo")
    ws.update_project(images_root=str(tmp_path), classes=["A", "B"])
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.json").write_text(json.dumps({"classes": ["A", "B"]}))
    version = ws.registry.publish(staged)
    assert resolve_model_dir(cli._predict_model(args)) == ws.registry.path(version)
    (tmp_path / "scopeloop-models").mkdir()   # what `scopeloop train` writes comes first, as before
    assert cli._predict_model(args) == Path("scopeloop-models")


def test_a_command_that_needs_no_model_never_imports_torch(tmp_path):
    """Issue 22 (restart under 20 s): `main` imported torch, timm and torchvision (~5 s on a busy
    machine) before every command, only to name an exception class."""
    code = ("import sys; from scopeloop.cli import main; rc = main(['status']); "
            "print(rc, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"SCOPELOOP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin",
                            "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert r.stdout.strip().splitlines()[-1] == "2 False", r.stdout + r.stderr
