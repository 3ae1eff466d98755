"""A project's reading settings: chosen from its images (bit depth, stacks) and the user's choices, then fixed."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from trainer.io.best_focus import looks_brightfield
from trainer.io.decode import read_raw
from trainer.io.errors import ImageReadError
from trainer.io.normalise import dataset_ranges, estimate_bit_depth
from trainer.io.planes import z_planes
from trainer.io.settings import Preprocessing, as_preprocessing


def default_stack(paths: Sequence, sample: int = 40, stacks: int = 5, seed: int = 0) -> str:
    """What a project's Z-stacks become when the user did not say: "best-focus" when most of
    the stacks found in a sample of `paths` (up to `stacks` of them) are brightfield
    (`trainer.io.best_focus.looks_brightfield` on the middle plane), else "mip" (fluorescence,
    and projects without stacks keep the default)."""
    import numpy as np

    paths = list(paths)
    rng = np.random.default_rng(seed)
    votes = []
    for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False)) if paths else []:
        if len(votes) >= stacks:
            break
        if z_planes(paths[i]) < 2:
            continue
        try:
            votes.append(looks_brightfield(read_raw(paths[i], prep=Preprocessing(stack="plane"))))
        except (ImageReadError, ValueError):
            continue
    return "best-focus" if votes and sum(votes) * 2 > len(votes) else "mip"


def reading_settings(paths: Sequence, stack: str = "mip", plane: int | None = None, timepoint: int = 0,
                     normalisation: str = "per-image", bit_depth: int | None = None,
                     channels: Sequence[int] | None = None, sample: int = 200) -> Preprocessing:
    """A project's `Preprocessing` from its choices, computing what they need from the images:
    per-dataset ranges from a sample of `paths` (`dataset_ranges`), the bit depth from their
    largest value when not given (`estimate_bit_depth`). Raises ValueError for a bad choice
    (``both`` on multi-channel images without one chosen channel included)."""
    base = Preprocessing(channels=channels, stack=stack, plane=plane, timepoint=timepoint)
    if normalisation in ("per-dataset", "both"):
        ranges = dataset_ranges(paths, base, sample=sample)
        if normalisation == "both" and len(ranges) > 1 and len(channels or ()) != 1:
            raise ValueError(f"normalisation 'both' is for single-channel images; these have {len(ranges)} channels: "
                             "use 'per-dataset', or pick one channel (--channels 0)")
        return replace(base, normalisation=normalisation, ranges=ranges)
    if normalisation == "bit-depth":
        return replace(base, normalisation="bit-depth", bit_depth=bit_depth or estimate_bit_depth(paths))
    return replace(base, normalisation=normalisation)


READING_CHOICES = ("stack", "plane", "timepoint", "normalisation", "bit_depth")


def project_reading(paths: Sequence, choices: Mapping | None = None, stored: Mapping | None = None,
                    channels: Sequence[int] | None = None, sample: int = 200) -> Preprocessing:
    """A project's reading settings at `init`: `choices` (`READING_CHOICES`, None = not given)
    over the `stored` ones (the project's ``preprocessing`` dict from an earlier init), over the
    defaults. What a choice needs is computed from a sample of `paths` (`reading_settings`)
    once: when nothing changed, the stored settings, per-dataset ranges included, are kept, so
    re-running init on a grown folder does not move the embedding space. A first init without a
    stack choice reads brightfield stacks by their best-focus plane (`default_stack`). Raises ValueError."""
    old = as_preprocessing(dict(stored or {}, channels=channels))
    given = {k: v for k, v in (choices or {}).items() if k in READING_CHOICES and v is not None}
    if "plane" in given and "stack" not in given:
        given["stack"] = "plane"  # a plane number means: read that plane
    if "normalisation" in given and given["normalisation"] != old.normalisation:
        old = replace(old, normalisation="per-image", ranges=None, bit_depth=None)
    if "stack" in given and given["stack"] != old.stack:
        old = replace(old, plane=None)
    want = {k: given.get(k, getattr(old, k)) for k in READING_CHOICES}
    if "stack" not in given and "stack" not in (stored or {}):  # first init: brightfield stacks -> best focus
        want["stack"] = default_stack(paths)
    if stored and all(want[k] == getattr(old, k) for k in READING_CHOICES):
        return old
    return reading_settings(paths, channels=channels, sample=sample, **want)
