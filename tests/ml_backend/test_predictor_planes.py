"""/predict for a task that is one Z plane of a stack (project stack "planes": key <file>#z<k>)."""
from __future__ import annotations

import numpy as np
import tifffile

from tests.ml_backend.test_predictor import CLASSES, choice, lite_config, project, task, trained_base  # noqa: F401


def test_a_plane_task_is_predicted_from_its_plane(project):  # noqa: F811
    from ml_backend.predictor import Predictor

    stack = np.stack([np.full((48, 48), 500 * (z + 1), np.uint16) for z in range(3)])
    stack[:, 10:30, 10:30] += np.arange(3, dtype=np.uint16)[:, None, None] * 3000
    tifffile.imwrite(project["images"] / "Neutrophil" / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    p = Predictor(project["ws"])
    out = p.predict([task(1, "Neutrophil/stack.tif#z0"), task(2, "Neutrophil/stack.tif#z2"),
                     task(3, "Neutrophil/stack.tif#z9")], lite_config())
    assert out.counts["computed"] == 2 and choice(out.results[0]) in CLASSES and choice(out.results[1]) in CLASSES
    assert len(out.errors) == 1 and "stack.tif#z9" in out.errors[0] and "3 Z plane" in out.errors[0]
