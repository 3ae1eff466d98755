"""`scopeloop qc` on a folder: the QC pass with embeddings from the default backbone, to a CSV."""
from __future__ import annotations

from pathlib import Path

from trainer.io.folders import image_key, list_images
from trainer.quality.assess import QCReport, assess, write_csv
from trainer.quality.settings import QCSettings


def qc_folder(folder, out_csv, settings: QCSettings | None = None, embed: bool = True,
              backbone: str = "tf_efficientnet_lite0", image_size: int = 224, progress: bool = False) -> QCReport:
    """`scopeloop qc`: every image under `folder` -> `out_csv` (keys relative to the folder).

    With `embed`, images are embedded with `backbone` (offline ImageNet weights by default) for
    near-duplicates and `unusual`; without, those two verdicts are not judged."""
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images (png/jpg/tif) found under '{folder}'")
    keys = [image_key(p, folder) for p in paths]
    emb = ekeys = None
    if embed:
        from trainer.models.inference import embed_paths

        e, rows, _ = embed_paths(paths, backbone=backbone, image_size=image_size, progress=progress)
        emb, ekeys = e, [keys[r] for r in rows]
    report = assess(paths, keys, emb, ekeys, settings)
    write_csv(report.results, out_csv)
    if len(report.skipped):
        report.skipped.write_json(Path(out_csv).with_suffix(".skipped.json"))
    return report
