"""Image QC settings (`QCSettings`): thresholds and switches, per project in qc_settings.json; verdict names."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

VERDICTS = ("ok", "blank", "out_of_focus", "saturated", "too_dark", "duplicate", "unusual")
PRIORITY = ("too_dark", "saturated", "blank", "out_of_focus", "duplicate", "unusual")
DEFOCUS_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
PATCH = 64  # patch side, working pixels
MAX_PATCHES = 64
MAX_SIDE = 1024  # larger images are binned by an integer factor before the focus features
TOP_TOLERANCE = 0.005  # a pixel "at the top" is within 0.5 % of full scale
TOP_OBJECT = 16  # an object is at least this many pixels: the 16th brightest pixel is a field's content
BANDS = (1.0, 2.0, 4.0, 8.0)  # Gaussian sigmas: bands I-G1, G1-G2, G2-G4, G4-G8
SETTINGS_FILE = "qc_settings.json"
MAX_TRAIN_PATCHES = 8000
THUMB = 48
THUMB_SHIFT = 3



@dataclass
class QCSettings:
    """Per-project thresholds (defaults measured in docs/benchmarks.md, "Image quality control").

    Load from a JSON object with any subset of these fields (`QCSettings.from_dict`)."""

    too_dark: float = 0.05  # brightness below -> too_dark
    saturated: float = 0.05  # saturated_share at/above -> saturated
    blank: float = 0.004  # structure below -> blank
    out_of_focus: float = 2.0  # defocus_px at/above -> out_of_focus
    duplicate: float = 0.90  # pixel_match at/above (for an embedding candidate) -> duplicate
    duplicate_candidate: float = 0.80  # centred cosine similarity at/above -> checked for duplicate
    unusual: float = 6.0  # unusual_z at/above -> unusual
    focus_method: str = "learned"  # "learned" or "laplacian"
    bit_depth: int | None = None  # None: inferred from the pool
    flagged: str = "end"  # in the suggested order: "end" (after every ok image) or "exclude"

    def __post_init__(self):
        if self.focus_method not in ("learned", "laplacian"):
            raise ValueError(f"QC setting focus_method={self.focus_method!r}: use 'learned' or 'laplacian'")
        if self.flagged not in ("end", "exclude"):
            raise ValueError(f"QC setting flagged={self.flagged!r}: use 'end' or 'exclude'")
        if self.bit_depth is not None and not 1 <= int(self.bit_depth) <= 32:
            raise ValueError(f"QC setting bit_depth={self.bit_depth!r}: give the camera's bits (8, 12, 16, ...)")

    @classmethod
    def from_dict(cls, d: dict | None, source: str = "QC settings") -> "QCSettings":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        for k, v in d.items():
            if k in ("focus_method", "flagged") or (k == "bit_depth" and v is None):
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{source}: field '{k}' must be a number, got {v!r}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "QCSettings":
        """From a JSON file; a missing file gives the defaults."""
        p = Path(path)
        if not p.is_file():
            return cls()
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"QC settings file '{p}' is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(d, dict):
            raise ValueError(f"QC settings file '{p}' must hold a JSON object of thresholds")
        return cls.from_dict(d, source=f"QC settings file '{p}'")
