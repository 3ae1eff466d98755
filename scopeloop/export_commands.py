"""`scopeloop export` and `scopeloop report`: the command-line side of the exports and the QC report."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.reports.export_dataset import export_dataset, label_studio_exporter
from trainer.reports.export_model import export_model
from trainer.reports.export_paths import ExportError


def _workspace(args):
    """The project's work directory from --workdir, or --project NAME under SCOPELOOP_HOME."""
    from scopeloop.settings import load_settings
    from trainer.store.workspace import Workspace

    if not args.workdir:
        return Workspace(load_settings().existing_project(args.project))
    root = Path(args.workdir)
    if not (root / "project.json").is_file():
        raise ExportError(f"no scopeloop project in '{root}': run `scopeloop init` first or pass --workdir")
    return Workspace(root)


def _sync_labels(workspace) -> dict:
    """Fresh labels from Label Studio, read in full once: the export's snapshot."""
    from ml_backend.labelstudio.sync import sync_labels
    from scopeloop.settings import load_settings

    s = load_settings()
    return sync_labels(s.label_studio_client(), workspace, full=True)


def _ls_exporter(snapshot: dict, workspace):
    from scopeloop.settings import load_settings

    s = load_settings()
    pid = snapshot.get("project_id") or workspace.project.get("ls_project_id")
    if not pid:
        raise ExportError("no Label Studio project id in the labels snapshot: sync labels first")
    return label_studio_exporter(s.label_studio_client(), int(pid))


def cmd_export(args, sync: Callable | None = None) -> int:
    """`scopeloop export dataset|model`; `sync(workspace) -> snapshot` is injectable for tests."""
    if args.what == "model":
        from trainer.reports.batch_predict import resolve_model_dir

        ws = None if args.model else _workspace(args)
        model_dir = resolve_model_dir(args.model or ws.registry.root, args.version)
        info = export_model(model_dir, args.out, workspace=ws, overwrite=args.overwrite, torchscript=not args.no_torchscript)
        print(f"model {model_dir.name} exported to {info['out']} (classes: {', '.join(info['classes'])})")
        if info["torchscript_max_diff"] is not None:
            print(f"TorchScript: model.torchscript.pt (matches the model within {info['torchscript_max_diff']:.1e})")
        if not info["ood_reference"]:
            print("note: no out-of-distribution reference could be stored (no labeled images found)")
        print(f"use it anywhere: scopeloop predict --model {info['out']} --input <images> --out predictions.csv")
        return 0
    ws = _workspace(args)
    snapshot = None if args.offline else (sync or _sync_labels)(ws)
    snapshot = snapshot if snapshot is not None else ws.labels
    formats = set(args.format or [])
    s = export_dataset(ws, args.out, snapshot, mode=args.mode, overwrite=args.overwrite, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, seed=args.seed, group_pattern=args.group_pattern,
                       exclude_flagged=args.exclude_flagged,
                       formats=formats, ls_export=_ls_exporter(snapshot, ws) if "ls-json" in formats else None)
    print(f"{s['exported']} labeled images exported to {s['out']} ({', '.join(f'{c} {n}' for c, n in s['counts'].items())})")
    if s["left_out"]:
        print(f"{len(s['left_out'])} labeled image(s) left out (see left_out.csv):")
        for x in s["left_out"][:20]:
            print(f"  task {x['task_id']} {x['key']}: {x['reason']}")
        if len(s["left_out"]) > 20:
            print(f"  ... and {len(s['left_out']) - 20} more")
    print(f"datasheet: {Path(s['out']) / 'README.md'}; train on it: scopeloop train --data {Path(s['out']) / 'images'}")
    return 0


def cmd_report(args) -> int:
    from trainer.reports.html import build_report

    ws = _workspace(args)
    s = build_report(ws, args.out, version=args.version)
    print(f"QC report of model version {s['version'] or '(none yet)'} written in {s['seconds']:.1f} s: {s['path']}")
    return 0


def _project_args(p) -> None:
    p.add_argument("--project", default="default", help="project name under SCOPELOOP_HOME (default: %(default)s)")
    p.add_argument("--workdir", help="the project's work directory (overrides --project)")


def add_cli(subparsers) -> None:
    """Register `export` and `report` on the `scopeloop` command's subparsers."""
    e = subparsers.add_parser("export", help="export the labeled dataset or a model for use outside the project",
                              description="dataset: ImageFolder copy of the labeled images + manifest, split, label map "
                                          "and datasheet. model: a self-contained model folder (+ TorchScript).")
    e.add_argument("what", choices=["dataset", "model"])
    e.add_argument("--out", required=True, help="export folder (new, empty, or an earlier export with --overwrite)")
    _project_args(e)
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    d = e.add_argument_group("dataset")
    d.add_argument("--mode", choices=["copy", "symlink", "hardlink"], default="copy", help="how image files are placed (default: copy)")
    d.add_argument("--offline", action="store_true", help="export the labels synced last, without contacting Label Studio")
    d.add_argument("--format", action="append", choices=["json", "ls-json"],
                   help="also write manifest.json (json) or Label Studio's own JSON export (ls-json); repeatable")
    d.add_argument("--val-fraction", type=float, default=0.15)
    d.add_argument("--test-fraction", type=float, default=0.15)
    d.add_argument("--group-pattern", help="regex on the file name giving the image's group (e.g. 'BloodImage_\\d+'): "
                                           "a group never straddles train/val/test")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--exclude-flagged", action="store_true",
                   help="leave out labeled images the image quality check flagged (blank, out of focus, ...); "
                        "by default they are exported as labeled, with their verdict in the manifest")
    m = e.add_argument_group("model")
    m.add_argument("--version", help="model version (default: current)")
    m.add_argument("--model", help="a model registry or version folder instead of the project's (e.g. scopeloop train --out)")
    m.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript file")
    e.set_defaults(func=cmd_export)

    r = subparsers.add_parser("report", help="write the quality-control report (one HTML file)",
                              description="One self-contained HTML page: scores, confusions, learning curve, uncertain "
                                          "images and labels worth a second look. Built from stored results in seconds.")
    _project_args(r)
    r.add_argument("--out", default="scopeloop-report.html", help="HTML file to write (default: %(default)s)")
    r.add_argument("--version", help="model version (default: current)")
    r.set_defaults(func=cmd_report)
