"""Settings of the cell finder (`CellSettings`): what a user may fix, everything else measured.

Every field has an automatic default (``"auto"`` or ``None``) that `trainer.cells.auto` measures
on each field; an explicit value always wins. Lengths are in pixels of the original image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MODALITIES = ("auto", "brightfield", "fluorescence")
# named signals of a colour brightfield image (cells bright in each, see trainer.cells.auto.signal)
NAMED_CHANNELS = ("od", "saturation", "hematoxylin", "eosin", "dab", "grey")
THRESHOLDS = ("li", "otsu", "triangle", "local")
BORDERS = ("label", "skip")


@dataclass(frozen=True)
class CellSettings:
    """How cells are found in a field of view.

    modality: "auto" (decided per field from its background: bright -> brightfield, dark ->
        fluorescence), "brightfield" (cells darker or more coloured than the background) or
        "fluorescence" (cells bright on a dark background).
    channel: "auto" (the candidate signal whose Otsu threshold separates best, see
        `trainer.cells.auto.choose_signal`), an image channel index (int, cells bright in it for
        fluorescence, dark for brightfield) or a named signal of an RGB brightfield image:
        "od" (mean optical density), "saturation", "hematoxylin" / "eosin" / "dab" (colour
        deconvolution, Ruifrok & Johnston 2001), "grey".
    diameter: expected cell diameter in pixels; None: measured per field (`auto.measure_diameter`).
    threshold: "li" (minimum cross-entropy, Li & Tam 1998; one global threshold per field),
        "otsu", "triangle" (Zack et al. 1977), or "local" (Gaussian-weighted local mean, block of
        about 4 diameters, for uneven illumination; never below half the Otsu threshold).
    background_sds: the threshold never lies above the background's mode + this many times its
        spread (`trainer.cells.auto.background_ceiling`): faint cells stay foreground when a much
        darker or brighter kind of cell (a white cell among pale red cells) pulls a two-class
        threshold up; None: off.
    smooth: Gaussian sigma in pixels before thresholding; None: diameter / 25 (at least 1).
    min_area, max_area: objects kept, as fractions of the expected cell area pi * diameter**2 / 4.
    split: split touching cells by a distance-transform watershed.
    split_depth: a cell's centre lies at least this fraction of the expected radius inside the
        foreground (distance-transform maxima lower than that seed no cell of their own).
    split_distance: two cell centres lie at least this fraction of the diameter apart; smaller
        splits more.
    split_area, split_area_unit, split_solidity: after the watershed, an object larger than
        split_area x the expected cell area and less solid (area / convex hull area) than
        split_solidity is a cluster of overlapping cells with no neck (dense blood smears): it is
        divided into round(area / (split_area_unit x cell area)) parts by k-means on its pixel
        coordinates (`trainer.cells.segment.split_by_area`); split_area None: off.
    border: "label" (cells touching the image border are kept, flagged ``edge``) or "skip".
    crop_scale: crop side = crop_scale * diameter (square, centred on the cell), and never
        smaller than 1.2 x the cell's longer box side.
    background: what a crop shows around its cell: "context" (the field as it is; the default;
        compared with "masked" by scripts/benchmark_cell_classification.py) or "masked" (the field's median colour outside
        the cell's mask; `trainer.cells.crops.cut_cell`).
    crops: write one PNG crop per cell.
    tile: core side of a tile for large fields (fields larger than this are processed by tiles).
    max_cells: most cells accepted in one field (an imported label image with more is refused).
    reading: reading settings (a `trainer.io` Preprocessing, its dict, or channel indices):
        Z-stacks, time points, channels, as for single-cell images.
    """

    modality: str = "auto"
    channel: str | int = "auto"
    diameter: float | None = None
    threshold: str = "li"
    background_sds: float | None = 4.0
    smooth: float | None = None
    min_area: float = 0.1
    max_area: float = 25.0
    split: bool = True
    split_depth: float = 0.2
    split_distance: float = 0.35
    split_area: float | None = 1.5
    split_area_unit: float = 1.0
    split_solidity: float = 0.9
    border: str = "label"
    crop_scale: float = 2.0
    background: str = "context"
    crops: bool = True
    tile: int = 2048
    max_cells: int = 200_000
    reading: object = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality '{self.modality}': use one of {', '.join(MODALITIES)}")
        ch = self.channel
        if isinstance(ch, str) and ch.lstrip("-").isdigit():
            object.__setattr__(self, "channel", int(ch))
        elif not isinstance(ch, int) and ch != "auto" and ch not in NAMED_CHANNELS:
            raise ValueError(f"channel '{ch}': use auto, a channel number or one of {', '.join(NAMED_CHANNELS)}")
        if self.diameter is not None and not float(self.diameter) > 2:
            raise ValueError(f"diameter {self.diameter}: give the expected cell diameter in pixels (> 2)")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold '{self.threshold}': use one of {', '.join(THRESHOLDS)}")
        if self.border not in BORDERS:
            raise ValueError(f"border '{self.border}': use one of {', '.join(BORDERS)}")
        if self.background not in ("context", "masked"):
            raise ValueError(f"background '{self.background}': use context or masked")
        if self.tile < 256:
            raise ValueError(f"tile {self.tile}: use at least 256 pixels")
        if not 0 < self.min_area < self.max_area:
            raise ValueError("min_area must be > 0 and below max_area (fractions of the expected cell area)")

    def to_dict(self) -> dict:
        """JSON-ready settings (recorded next to cells.csv)."""
        d = asdict(self)
        r = self.reading
        d["reading"] = r.to_dict() | {"channels": list(r.channels) if r.channels else None} \
            if hasattr(r, "to_dict") else r
        return d

    def with_(self, **kw) -> "CellSettings":
        return replace(self, **kw)
