"""Reading settings (`Preprocessing`): stack handling, time point, channels, intensity normalisation; recorded in a model's preprocessing config."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Mapping

from trainer.io.formats import NORMALISATIONS, STACK_MODES


@dataclass(frozen=True)
class Preprocessing:
    """What a file becomes before the model sees it; saved in the model's config.json
    (``preprocessing``) so training, inference, previews and export read alike.

    channels: image channels feeding R, G, B (None: the documented mapping).
    stack: "mip" (maximum-intensity projection over Z, default), "plane" (one Z plane),
        "planes" (each Z plane its own image: paths ``<file>#z<k>``, see `expand_planes`) or
        "best-focus" (each stack's sharpest plane, `trainer.io.best_focus`: brightfield stacks,
        chosen at init by `trainer.io.project_reading` when the stacks are brightfield).
    plane: the Z index for stack="plane" (None: the middle plane).
    timepoint: the T index of a time series (default 0, the first).
    normalisation: "per-image" (default), "per-dataset", "bit-depth" or "both" (module doc).
    ranges: per-dataset and both: ((lo, hi), ...) one per image channel, from `dataset_ranges`.
    bit_depth: bit-depth only: significant bits (e.g. 12); None: the sample type's depth.
    """

    channels: tuple[int, ...] | None = None
    stack: str = "mip"
    plane: int | None = None
    timepoint: int = 0
    normalisation: str = "per-image"
    ranges: tuple[tuple[float, float], ...] | None = None
    bit_depth: int | None = None

    def __post_init__(self):
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.ranges is not None:
            object.__setattr__(self, "ranges", tuple((float(a), float(b)) for a, b in self.ranges))
        if self.stack not in STACK_MODES:
            raise ValueError(f"stack '{self.stack}': use one of {', '.join(STACK_MODES)}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation '{self.normalisation}': use one of {', '.join(NORMALISATIONS)}")
        if self.normalisation in ("per-dataset", "both") and not self.ranges:
            raise ValueError(f"normalisation '{self.normalisation}' needs ranges (trainer.io.normalise.dataset_ranges)")
        if self.bit_depth is not None and not 1 <= int(self.bit_depth) <= 32:
            raise ValueError(f"bit_depth {self.bit_depth}: give the camera's bits per pixel, e.g. 12")
        if int(self.timepoint) < 0 or (self.plane is not None and int(self.plane) < 0):
            raise ValueError("timepoint and plane are indices from 0")

    def to_dict(self) -> dict:
        """JSON-ready dict of the reading settings, without `channels` (kept in its own field)."""
        d = asdict(self)
        d.pop("channels")
        if d["ranges"] is not None:
            d["ranges"] = [list(r) for r in d["ranges"]]
        return d

    @property
    def is_default(self) -> bool:
        return replace(self, channels=None) == Preprocessing()

    def tag(self) -> str:
        """Short id of the non-default settings (part of the embedding-space id); '' if default."""
        if self.is_default:
            return ""
        parts = []
        if self.stack == "planes":
            parts.append("zeach")
        elif self.stack == "best-focus":
            parts.append("zbest")
        elif self.stack != "mip" or self.plane is not None:
            parts.append(f"z{'mid' if self.plane is None else self.plane}")
        if self.timepoint:
            parts.append(f"t{self.timepoint}")
        if self.normalisation in ("per-dataset", "both"):
            import hashlib

            parts.append(("nd" if self.normalisation == "per-dataset" else "nx")
                         + hashlib.sha1(json.dumps(self.ranges).encode()).hexdigest()[:6])
        elif self.normalisation == "bit-depth":
            parts.append(f"nb{self.bit_depth or ''}")
        return "-".join(parts)

    def describe(self) -> str:
        """One line for `init`'s summary and the report."""
        z = "maximum-intensity projection over Z" if self.stack == "mip" else \
            "each Z plane its own image (keys <file>#z<k>)" if self.stack == "planes" else \
            "the best-focus Z plane of each stack (largest variance of the Laplacian; brightfield: " \
            "a maximum projection would wash the cells out)" if self.stack == "best-focus" else (
            f"Z plane {self.plane}" if self.plane is not None else "the middle Z plane")
        norm = {"per-image": "per-image percentile stretch (0.5-99.8 %; 8-bit /255)",
                "per-dataset": f"fixed per-dataset range per channel {[list(r) for r in self.ranges or []]}",
                "bit-depth": f"fixed /{2 ** self.bit_depth - 1 if self.bit_depth else 'dtype max'} (bit depth)",
                "both": f"per-image stretch in R and B, fixed per-dataset range {[list(r) for r in self.ranges or []]} in G"}
        ch = f"; channels {list(self.channels)} -> R,G,B" if self.channels else ""
        return f"{z}; time point {self.timepoint}; {norm[self.normalisation]}{ch}"


def as_preprocessing(spec=None) -> Preprocessing:
    """A `Preprocessing` from None, a list of channel indices (the old `channels` argument),
    a config dict (``{"channels": .., "stack": .., ...}``) or a `Preprocessing`."""
    if spec is None:
        return Preprocessing()
    if isinstance(spec, Preprocessing):
        return spec
    if isinstance(spec, Mapping):
        known = {k: v for k, v in spec.items() if k in Preprocessing.__dataclass_fields__ and v is not None}
        return Preprocessing(**known)
    return Preprocessing(channels=tuple(spec))


def reader_of(cfg: Mapping) -> Preprocessing:
    """The `Preprocessing` of a model config or a project's ``model`` settings (dicts holding
    ``preprocessing`` (`Preprocessing.to_dict`) and ``channels``); defaults where absent."""
    return as_preprocessing(dict(cfg.get("preprocessing") or {}, channels=cfg.get("channels")))
