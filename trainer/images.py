"""Reading microscopy images into the one shape every model here eats.

Microscopes write PNG/JPEG (brightfield, 8-bit RGB), TIFF in its many flavours (ImageJ
hyperstacks, OME-TIFF, MetaMorph, slide-scanner SVS/NDPI pyramids; 8/12/16-bit or float;
LZW/Deflate/JPEG/JPEG 2000/zstd/PackBits compressed) and vendor formats (Zeiss CZI, Nikon ND2,
Leica LIF). Everything becomes float32 (H, W, 3) in [0, 1] by four documented steps:

1. **decode** with the field's readers: tifffile + imagecodecs for TIFF and 16-bit PNG, Pillow
   for 8-bit PNG/JPEG/BMP, the bioio family (optional extra ``pip install 'scopeloop[formats]'``)
   for CZI/ND2/LIF and OME-Zarr folders (``*.zarr``, bioio-ome-zarr). Slide-scanner pyramids: the full-resolution level. Multi-series files
   (scenes, thumbnails, labels): the first series. EXIF/TIFF orientation is applied.
2. **axes** come from the file's metadata (tifffile's ``series.axes`` for ImageJ, OME, MetaMorph,
   SVS, NDPI ...; bioio's dims for vendor formats): C (and RGB samples S) are colours, Z and T
   never are. Only a TIFF without axis metadata falls back to the shape: one leading axis of
   <= 16 planes smaller than the image is channels (a 3 x 12 x 12 crop is 3 channels), a longer
   one is a Z-stack, a trailing short axis after a long one is channel-last.
3. **stack -> plane** (`Preprocessing`, recorded in the model's config): T -> one time point
   (``timepoint``, default 0, the first); Z -> maximum-intensity projection (``stack="mip"``,
   default), one plane (``stack="plane"``, ``plane`` index, default the middle one) or each plane
   its own image (``stack="planes"``: `expand_planes` lists a Z-stack ``cells.tif`` of 5 planes as
   ``cells.tif#z0`` ... ``cells.tif#z4``, one task each; a path ending ``#z<k>`` reads plane k,
   unless a file of exactly that name exists); any other axis (tiles, views, lambda) -> its
   first index.
4. **intensities** (``normalisation``): ``per-image`` (default): 8-bit divided by 255 (its look
   is already meaningful, as in the ImageNet photos the backbone learned from); 16-bit, 32-bit,
   signed and float images get a per-image, per-channel robust stretch: the 0.5th percentile
   maps to 0 and the 99.8th to 1 (exposure drift between plates cancels out).
   ``per-dataset``: one fixed (lo, hi) per channel for every image, computed once from a sample
   of the pool (`dataset_ranges`): absolute differences (DNA content, expression level) survive.
   ``bit-depth``: a fixed division by 2**bits - 1 (``bit_depth``, e.g. 12 for a 12-bit camera
   writing 16-bit samples; default the sample type's own depth).
   ``both`` (single-channel images only): R and B the per-image stretch, G the per-dataset
   range: a grey image leaves two of the backbone's three inputs as copies, one of them carries
   the absolute intensity (measured in docs/benchmarks.md, "Intensity normalisation").
   Then channels -> the backbone's 3 inputs (the documented mapping):
   1 channel -> copied to R, G and B;  2 channels -> R = ch0, G = ch1, B = 0;
   3 channels -> R, G, B;  4 channels from PNG/JPEG (RGBA) -> alpha dropped;
   N > 3 channels -> the first three, unless ``channels=[i, j, k]`` picks others
   (1, 2 or 3 indices, mapped like 1/2/3-channel images).

A file that cannot be read raises `ImageReadError`, naming the file and the reason (for a
vendor format without its reader: the exact install command); batch readers catch it, skip
the image and record it in a `SkipReport`.

File names: any byte sequence the file system allows. A name that is not valid UTF-8 gets a
key in which every undecodable byte is written ``\\xNN`` (Python's ``backslashreplace``), so keys
are always valid UTF-8 in CSV/JSON; `path_for_key` maps such a key back to the file.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# vendor formats read through the bioio family: suffix -> (format name, bioio plugin)
BIOIO_FORMATS = {
    ".czi": ("Zeiss CZI", "bioio-czi"),
    ".nd2": ("Nikon ND2", "bioio-nd2"),
    ".lif": ("Leica LIF", "bioio-lif"),
}
ZARR_SUFFIX = ".zarr"  # OME-Zarr (NGFF): a folder, read through bioio-ome-zarr
ZARR_FORMAT = ("OME-Zarr", "bioio-ome-zarr")
IMAGE_SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | set(BIOIO_FORMATS) | {ZARR_SUFFIX}
FORMATS_EXTRA = "pip install 'scopeloop[formats]'"
PERCENTILES = (0.5, 99.8)
MAX_CHANNEL_AXIS = 16
MEMMAP_BYTES = 64 << 20  # uncompressed TIFF series larger than this are memory-mapped, not read whole
MAX_DECODE_BYTES = 2 << 30  # a compressed series larger than this (whole-slide images) is refused
NORMALISATIONS = ("per-image", "per-dataset", "bit-depth", "both")
STACK_MODES = ("mip", "plane", "planes")
_PLANE_SUFFIX = re.compile(r"#z(\d+)$")  # "cells.tif#z3": plane 3 of cells.tif (stack="planes")


class ImageReadError(Exception):
    """An image file that cannot be turned into pixels; the message names file and reason."""

    def __init__(self, path, reason: str):
        self.path = display_path(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


def display_path(path) -> str:
    """`path` as valid UTF-8 text: undecodable bytes of a non-UTF-8 name written as \\xNN."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


@dataclass
class SkipReport:
    """Images a batch job skipped, with the reason: reported, never silently dropped."""

    skipped: list[dict] = field(default_factory=list)

    def add(self, path, reason: str) -> None:
        self.skipped.append({"path": display_path(path), "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "no image skipped"
        lines = [f"{len(self.skipped)} image(s) skipped:"]
        lines += [f"  {s['path']}: {s['reason']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see the JSON report)")
        return "\n".join(lines)

    def write_json(self, path) -> None:
        Path(path).write_text(json.dumps({"count": len(self.skipped), "skipped": self.skipped}, indent=1))


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class Preprocessing:
    """What a file becomes before the model sees it; saved in the model's config.json
    (``preprocessing``) so training, inference, previews and export read alike.

    channels: image channels feeding R, G, B (None: the documented mapping).
    stack: "mip" (maximum-intensity projection over Z, default), "plane" (one Z plane) or
        "planes" (each Z plane its own image: paths ``<file>#z<k>``, see `expand_planes`).
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
            raise ValueError(f"normalisation '{self.normalisation}' needs ranges (trainer.images.dataset_ranges)")
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
            "each Z plane its own image (keys <file>#z<k>)" if self.stack == "planes" else (
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


# ---------------------------------------------------------------- Z planes as images

def split_plane(path) -> tuple[Path, int | None]:
    """(file, Z index) of a plane path ``<file>#z<k>``; (path, None) for any other path, and for
    a file that really is named ``...#z<k>`` (an existing file wins)."""
    p = Path(path)
    m = _PLANE_SUFFIX.search(p.name)
    if m is None or p.exists() or m.start() == 0:
        return p, None
    return p.with_name(p.name[:m.start()]), int(m.group(1))


def plane_path(path, z: int) -> Path:
    """The path naming Z plane `z` of `path` (``<path>#z<z>``), read by every reader here."""
    return Path(f"{os.fspath(path)}#z{int(z)}")


def image_exists(path) -> bool:
    """Whether `path` names an image: a file, an OME-Zarr folder, or a plane ``<file>#z<k>`` of one."""
    p, _ = split_plane(path)
    return p.is_file() or (p.suffix.lower() == ZARR_SUFFIX and p.is_dir())


def z_planes(path) -> int:
    """Number of Z planes of a file (1 without a Z axis or when unreadable). TIFF: from the
    header (no pixels read) when its metadata names the axes; otherwise the file is decoded."""
    path = Path(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        return 1
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                axes = series.axes.replace("I", "Z") if tf.is_imagej else series.axes
                if "Q" not in axes and not ("I" in axes):
                    return int(series.shape[axes.index("Z")]) if "Z" in axes else 1
        except Exception:  # noqa: BLE001 - unreadable: one image (reading it reports the problem)
            return 1
    try:
        dec = decode(path)
    except (ImageReadError, _UnnamedAxes):
        return 1
    return int(dec.data.shape[dec.axes.index("Z")]) if "Z" in dec.axes else 1


def expand_planes(paths: Iterable, prep=None) -> list[Path]:
    """The images of a project: with ``stack="planes"`` every Z-stack of n planes becomes n plane
    paths ``<file>#z0`` ... ``<file>#z<n-1>`` (one task each); otherwise `paths` unchanged."""
    if as_preprocessing(prep).stack != "planes":
        return [Path(p) for p in paths]
    out: list[Path] = []
    for p in paths:
        n = z_planes(p)
        out.extend([plane_path(p, z) for z in range(n)] if n > 1 else [Path(p)])
    return out


# ---------------------------------------------------------------- raw decoding

@dataclass
class Decoded:
    """One decoded file: `data` with the axis letters `axes` (subset of TZCSYX, file order
    reduced to one series/level), where the axes came from, and the file's format."""

    data: np.ndarray
    axes: str
    fmt: str
    axes_from: str = "metadata"  # "metadata" | "shape" (last-resort guess)
    file_axes: str = ""
    file_shape: tuple = ()
    notes: list[str] = field(default_factory=list)
    orientation: int = 1  # TIFF/EXIF orientation (1-8) still to apply to the plane


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder not in ("=", "|") and arr.dtype.byteorder != np.dtype(arr.dtype.type).byteorder:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _tiff_format(tf) -> str:
    for flag, name in (("is_ome", "OME-TIFF"), ("is_imagej", "ImageJ TIFF"), ("is_svs", "Aperio SVS"),
                       ("is_ndpi", "Hamamatsu NDPI"), ("is_stk", "MetaMorph TIFF"), ("is_lsm", "Zeiss LSM"),
                       ("is_fluoview", "FluoView TIFF"), ("is_scn", "Leica SCN"), ("is_qpi", "PerkinElmer QPI"),
                       ("is_shaped", "TIFF (tifffile shaped)")):
        if getattr(tf, flag, False):
            return name
    return "TIFF"


# axis letters the reader knows; tifffile/bioio letters outside these are "other" axes
_MEANINGFUL = set("TZCSYX")


def _read_tiff(path: Path) -> Decoded:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]  # a pyramid's series 0 *is* its full-resolution level
            fmt = _tiff_format(tf) + (" (BigTIFF)" if tf.is_bigtiff else "")
            axes, shape = series.axes, tuple(series.shape)
            data = None
            if series.nbytes > MEMMAP_BYTES and series.dataoffset is not None and not getattr(tf, "is_ndpi", False):
                try:  # large, uncompressed, contiguous: memory-map, read only the planes kept
                    data = tifffile.memmap(path, series=0, mode="r")
                    if tuple(data.shape) != shape:
                        data = None
                except Exception:  # noqa: BLE001 - not mappable: decode instead
                    data = None
            if data is None:
                if series.nbytes > MAX_DECODE_BYTES:
                    raise ImageReadError(path, f"{fmt} of {series.nbytes / 2 ** 30:.1f} GiB ({series.axes} "
                                               f"{'x'.join(map(str, series.shape))}), compressed: too large to "
                                               "read as one image; export tiles or crops (e.g. QuPath, Fiji) "
                                               "and add those")
                data = series.asarray()
            tag = getattr(series.keyframe, "tags", {}).get(274)  # TIFF Orientation
            orientation = int(tag.value) if tag is not None else 1
            is_imagej = bool(tf.is_imagej)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        msg = str(exc)
        if "imagecodecs" in msg:
            raise ImageReadError(path, f"TIFF compression needs the 'imagecodecs' package ({msg}); "
                                       "install it: pip install imagecodecs") from None
        raise ImageReadError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    if len(axes) != data.ndim:
        axes = "Q" * (data.ndim - len(axes)) + axes[-data.ndim:] if len(axes) < data.ndim else axes[-data.ndim:]
    dec = Decoded(data, axes, fmt, "metadata", axes, shape)
    if is_imagej and "I" in axes:  # ImageJ's plain "images=N" stack: ImageJ itself treats it as Z
        dec.axes = axes.replace("I", "Z")
    if orientation not in (1, 0):
        dec.notes.append(f"TIFF orientation {orientation} applied")
        dec.orientation = orientation
    if set(dec.axes) & {"Q", "I"}:  # axes the metadata does not name (or no metadata)
        _guess_axes(dec)
    return dec


class _UnnamedAxes(Exception):
    """Several axes a TIFF does not name: the shape cannot tell which is which."""


def _guess_axes(dec: Decoded) -> None:
    """Last resort for axes a TIFF does not name (tifffile's Q/I): decide from the shape.

    (n, H, W) with n <= 16 and n < min(H, W): n channels (a 3 x 12 x 12 crop is 3 channels);
    (H, W, n) with n <= 16 < H: channel-last; a longer leading axis: a Z-stack (projected,
    never colours). Two or more unnamed axes: refused (`_UnnamedAxes`)."""
    axes, shape = dec.axes, dec.data.shape
    keep = [i for i, (a, s) in enumerate(zip(axes, shape)) if not (a in "QI" and s == 1)]
    data = dec.data.reshape([shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    shape = data.shape
    unknown = [i for i, a in enumerate(axes) if a in "QI"]
    dec.data = data
    if not unknown:
        dec.axes = axes
        return
    if len(unknown) > 1:
        raise _UnnamedAxes
    i, n = unknown[0], shape[unknown[0]]
    if axes in ("QYX", "IYX") and shape[2] <= MAX_CHANNEL_AXIS < shape[0]:
        new = "YXC"  # (H, W, C) written without metadata: tifffile sees H pages of W x C
    elif n <= MAX_CHANNEL_AXIS and n < min(shape[axes.index("Y")], shape[axes.index("X")]) \
            and not set(axes) & {"C", "S"}:
        new = axes[:i] + "C" + axes[i + 1:]
    else:
        new = axes[:i] + "Z" + axes[i + 1:]
    dec.axes, dec.axes_from = new, "shape"
    dec.notes.append(f"axes {dec.file_axes} not in the file's metadata: read as {new} from the shape")


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF: leave the image as stored
        return 1


def _read_png16(path: Path, colour_type: int) -> tuple[np.ndarray, int]:
    """16-bit PNG at full depth (Pillow would give 8-bit RGB); alpha dropped; + orientation."""
    try:
        import imagecodecs
    except ImportError:
        raise ImageReadError(path, "16-bit PNG needs the 'imagecodecs' package: pip install imagecodecs") from None
    try:
        arr = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"not a readable PNG ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # LA / RGBA: alpha dropped
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    try:
        with Image.open(path) as im:
            orientation = _exif_orientation(im)
    except Exception:  # noqa: BLE001
        orientation = 1
    return arr, orientation


def _read_pil(path: Path, draft_size: int | None = None) -> tuple[np.ndarray, int]:
    try:
        png = _png_header(path)
        if png is not None and png[0] == 16:
            return _read_png16(path, png[1])
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))  # decode at reduced scale: much faster
            im.load()
            orientation = _exif_orientation(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.uint16 if im.mode.startswith("I;16") else np.int32), orientation
            if im.mode == "F":
                return np.asarray(im, dtype=np.float32), orientation
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im), orientation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"not a readable image ({exc})") from None


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF orientation (1-8) to (H, W[, C]), as Pillow's ImageOps.exif_transpose."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _read_bioio(path: Path, fmt: str, plugin: str) -> Decoded:
    try:
        from bioio import BioImage
        if plugin == ZARR_FORMAT[1]:
            import bioio_ome_zarr  # noqa: F401 - bioio alone would only say "no plugin"
    except ImportError:
        raise ImageReadError(path, f"{fmt} files need the optional readers: {FORMATS_EXTRA} "
                                   f"(bioio + {plugin})") from None
    try:
        img = BioImage(path)
    except Exception as exc:  # noqa: BLE001 - bioio raises per plugin
        if "UnsupportedFileFormat" in type(exc).__name__ or "plugin" in str(exc).lower():
            raise ImageReadError(path, f"{fmt} files need their bioio reader: {FORMATS_EXTRA} "
                                       f"(or pip install {plugin}) [{type(exc).__name__}]") from None
        raise ImageReadError(path, f"{fmt} file that {plugin} cannot decode ({type(exc).__name__}: {exc}); "
                                   "export it as OME-TIFF (Fiji: Bio-Formats Exporter) and add that file") from None
    try:
        order = img.dims.order  # e.g. "TCZYX" or "TCZYXS"
        data = np.asarray(img.get_image_dask_data(order).compute()) if hasattr(img, "get_image_dask_data") \
            else np.asarray(img.data)
        scenes = len(img.scenes)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"{fmt} file that {plugin} cannot decode ({type(exc).__name__}: {exc}); "
                                   "export it as OME-TIFF (Fiji: Bio-Formats Exporter) and add that file") from None
    dec = Decoded(data, order, fmt, "metadata", order, tuple(data.shape))
    if scenes > 1:
        dec.notes.append(f"first of {scenes} scenes")
    return dec


def decode(path) -> Decoded:
    """The file's pixels with their axes (see `Decoded`); raises ImageReadError."""
    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX and path.is_dir():
        return _read_bioio(path, *ZARR_FORMAT)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in BIOIO_FORMATS:
        return _read_bioio(path, *BIOIO_FORMATS[suffix])
    if suffix in TIFF_SUFFIXES:
        try:
            return _read_tiff(path)
        except _UnnamedAxes:
            raise ImageReadError(path, "has several axes its metadata does not name: save one 2-D "
                                       "plane (with channels) per file, or an ImageJ/OME-TIFF that "
                                       "names its axes (Z, T, C)") from None
    arr, orientation = _read_pil(path)
    dec = Decoded(arr, "YX" if arr.ndim == 2 else "YXC", "PNG" if _png_header(path) else "image", "metadata",
                  "YX" if arr.ndim == 2 else "YXS", arr.shape)
    if orientation not in (0, 1):
        dec.data = orient(arr, orientation)
        dec.notes.append(f"EXIF orientation {orientation} applied")
    return dec


def to_plane(dec: Decoded, prep: Preprocessing, path="image") -> np.ndarray:
    """(H, W) or (H, W, C) from a decoded file: T -> one time point, Z -> projection or one
    plane, other axes -> first index, C and S -> the last axis."""
    data, axes = dec.data, dec.axes
    idx: list = []
    for a, n in zip(axes, data.shape):
        if a == "T":
            if prep.timepoint >= n:
                raise ImageReadError(path, f"has {n} time point(s); the project reads time point {prep.timepoint}")
            idx.append(prep.timepoint)
        elif a == "Z" and prep.stack == "plane":  # ("planes": a file without #z<k> is projected)
            k = n // 2 if prep.plane is None else prep.plane
            if k >= n:
                raise ImageReadError(path, f"has {n} Z plane(s); the project reads plane {k}")
            idx.append(k)
        elif a in "ZCSYX":
            idx.append(slice(None))
        else:  # tiles, views, lambda, phase ...: the first
            if n > 1:
                dec.notes.append(f"axis {a} ({n}): first index")
            idx.append(0)
    arr = np.asarray(data[tuple(idx)])
    kept = "".join(a for a, i in zip(axes, idx) if isinstance(i, slice))
    if "Z" in kept:
        arr = arr.max(axis=kept.index("Z"))
        kept = kept.replace("Z", "")
    if "Y" not in kept or "X" not in kept:
        raise ImageReadError(path, f"has no image plane (axes {dec.file_axes or axes})")
    order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a in "CS"]
    arr = np.transpose(arr, order)
    if arr.ndim > 3:
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if dec.orientation not in (0, 1):
        arr = orient(arr, dec.orientation)
    return _native(arr)


def read_raw(path, draft_size: int | None = None, prep=None) -> np.ndarray:
    """Pixels in the file's own dtype, (H, W) or (H, W, C), after the stack choices of `prep`;
    a plane path ``<file>#z<k>`` gives plane k of the file whatever `prep` says about stacks."""
    path, z = split_plane(path)
    prep = as_preprocessing(prep)
    if z is not None:
        prep = replace(prep, stack="plane", plane=z)
    if path.suffix.lower() in PIL_SUFFIXES and path.is_file() and path.stat().st_size > 0 \
            and (_png_header(path) or (0,))[0] != 16:
        arr, orientation = _read_pil(path, draft_size)  # the fast path of 8-bit photos
        arr = orient(arr, orientation) if orientation not in (0, 1) else arr
    else:
        arr = to_plane(decode(path), prep, path)
    if arr.size == 0 or min(arr.shape[:2]) < 2:
        raise ImageReadError(path, f"image is too small {arr.shape}")
    return arr


# ---------------------------------------------------------------- normalisation

def to_unit_range(arr: np.ndarray, prep=None, path="image") -> np.ndarray:
    """float32 in [0, 1] by the project's normalisation (see the module doc); per-image by default:
    8-bit divided by 255, everything else stretched per channel."""
    prep = as_preprocessing(prep)
    arr = _native(arr)
    if prep.normalisation == "per-dataset":
        return _fixed_range(arr, prep.ranges, path)
    # "both": this is its per-image part (`to_model_input` adds the fixed range in G)
    if prep.normalisation == "bit-depth":
        if arr.dtype.kind == "f":
            raise ImageReadError(path, "is a floating-point image: it has no bit depth; use normalisation "
                                       "'per-image' or 'per-dataset' for this project")
        bits = prep.bit_depth or arr.dtype.itemsize * 8 - (1 if arr.dtype.kind == "i" else 0)
        return np.clip(arr.astype(np.float32) * np.float32(1.0 / (2 ** bits - 1)), 0.0, 1.0)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * (1.0 / 255.0)
    a = arr.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if arr.dtype == np.uint16:  # no NaN/inf possible; histogram percentiles: 2-3x faster, same values
        lo, hi = _percentiles_uint16(arr if arr.ndim == 3 else arr[..., None], PERCENTILES)
    else:
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, 0.0)
        lo, hi = np.percentile(a.reshape(-1, a.shape[-1]), PERCENTILES, axis=0)
    scale = np.where(hi > lo, 1.0 / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)
    out = np.clip((a - lo.astype(np.float32)) * scale, 0.0, 1.0)
    return out[..., 0] if arr.ndim == 2 else out


def _fixed_range(arr: np.ndarray, ranges, path) -> np.ndarray:
    a = arr.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if len(ranges) != a.shape[-1]:
        raise ImageReadError(path, f"has {a.shape[-1]} channel(s); the project's per-dataset range has "
                                   f"{len(ranges)}: all images of a per-dataset project need the same channels")
    lo = np.array([r[0] for r in ranges], np.float32)
    hi = np.array([r[1] for r in ranges], np.float32)
    a = np.where(np.isfinite(a), a, lo)
    scale = np.where(hi > lo, 1.0 / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)
    out = np.clip((a - lo) * scale, 0.0, 1.0)
    return out[..., 0] if arr.ndim == 2 else out


def dataset_ranges(paths: Sequence, prep=None, sample: int = 200, seed: int = 0,
                   percentiles=PERCENTILES, pixels_per_image: int = 20_000) -> tuple[tuple[float, float], ...]:
    """One fixed (lo, hi) intensity per channel for `per-dataset` normalisation: the 0.5th and
    99.8th percentiles of pixels pooled from up to `sample` images of the pool (stack choices
    of `prep` applied first; ``stack="planes"``: the middle plane of a stack). Unreadable images
    are left out; raises ValueError if none reads or the channel counts differ."""
    prep = replace(as_preprocessing(prep), normalisation="per-image", ranges=None)
    if prep.stack == "planes":
        prep = replace(prep, stack="plane", plane=None)
    rng = np.random.default_rng(seed)
    paths = list(paths)
    picked = [paths[i] for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False))] if paths else []
    pools, n_ch = [], None
    for p in picked:
        try:
            arr = _native(read_raw(p, prep=prep))
        except ImageReadError:
            continue
        flat = arr.reshape(-1, 1 if arr.ndim == 2 else arr.shape[-1]).astype(np.float64)
        if n_ch is None:
            n_ch = flat.shape[1]
        elif flat.shape[1] != n_ch:
            raise ValueError(f"'{display_path(p)}' has {flat.shape[1]} channel(s), other images {n_ch}: "
                             "per-dataset normalisation needs the same channels in every image")
        take = rng.choice(len(flat), min(pixels_per_image, len(flat)), replace=False)
        pools.append(flat[take])
    if not pools:
        raise ValueError("no readable image to compute the per-dataset intensity range from")
    allpx = np.concatenate(pools)
    allpx = np.where(np.isfinite(allpx), allpx, np.nan)
    lo, hi = np.nanpercentile(allpx, percentiles, axis=0)
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))


def estimate_bit_depth(paths: Sequence, sample: int = 50, seed: int = 0) -> int:
    """Smallest camera depth (8, 10, 12, 14, 16 bits) holding the largest value of a sample."""
    rng = np.random.default_rng(seed)
    paths = list(paths)
    top = 0.0
    for i in sorted(rng.choice(len(paths), min(sample, len(paths)), replace=False)) if paths else []:
        try:
            top = max(top, float(np.nanmax(read_raw(paths[i]))))
        except (ImageReadError, ValueError):
            continue
    return next((b for b in (8, 10, 12, 14, 16) if top <= 2 ** b - 1), 32)


def _percentiles_uint16(arr: np.ndarray, q) -> np.ndarray:
    """np.percentile(arr.reshape(-1, C).astype(float32), q, axis=0) of a uint16 (H, W, C) image,
    from per-channel histograms instead of a partition: same order statistics, same linear
    interpolation (numpy's _lerp), float64 like np.percentile; bit-identical results."""
    flat = arr.reshape(-1, arr.shape[-1])
    n = flat.shape[0]
    out = np.empty((len(q), flat.shape[1]), np.float64)
    for c in range(flat.shape[1]):
        cum = np.cumsum(np.bincount(flat[:, c]))
        for j, p in enumerate(q):
            idx = (p / 100.0) * (n - 1)
            k = int(np.floor(idx))
            t = idx - k
            lo = float(np.searchsorted(cum, k, side="right"))
            hi = float(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
            d = hi - lo
            out[j, c] = lo + d * t if t < 0.5 else hi - d * (1.0 - t)
    return out


def to_three_channels(arr: np.ndarray, channels: Sequence[int] | None = None, path="image") -> np.ndarray:
    """Map (H, W) / (H, W, C) to (H, W, 3) following the documented channel mapping."""
    if arr.ndim == 2:
        arr = arr[..., None]
    n = arr.shape[-1]
    if channels is not None:
        channels = list(channels)
        bad = [c for c in channels if not -n <= c < n]
        if not 1 <= len(channels) <= 3 or bad:
            raise ImageReadError(path, f"channels={channels} does not fit an image with {n} channel(s)")
        arr = arr[..., channels]
        n = arr.shape[-1]
    elif n > 3:
        arr = arr[..., :3]
        n = 3
    if n == 1:
        return np.repeat(arr, 3, axis=-1)
    if n == 2:
        return np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
    return arr


def read_image(path, channels=None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1]; `channels`: channel indices or a `Preprocessing` (or its dict).
    Raises ImageReadError naming the file."""
    prep = as_preprocessing(channels)
    raw = read_raw(path, prep=prep)
    return to_model_input(raw, prep, path)


def to_model_input(raw: np.ndarray, prep=None, path="image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from `read_raw`'s pixels: the project's normalisation, then
    the channel mapping; ``both``: R, B per-image and G the per-dataset range of one channel."""
    prep = as_preprocessing(prep)
    out = to_three_channels(to_unit_range(raw, prep, path), prep.channels, path)
    if prep.normalisation == "both":
        n = len(prep.channels) if prep.channels else (1 if raw.ndim == 2 else raw.shape[-1])
        if n != 1:
            raise ImageReadError(path, f"has {n} channels; normalisation 'both' is for single-channel images "
                                       "(choose one with channels, or use 'per-dataset')")
        fixed = to_three_channels(_fixed_range(_native(raw), prep.ranges, path), prep.channels, path)
        out = np.array(out, dtype=np.float32)
        out[..., 1] = fixed[..., 1]
    return out


def load_for_model(path, size: int, channels=None) -> np.ndarray:
    """float32 (size, size, 3) in [0, 1], the fast path for training and inference.

    `channels`: channel indices or a `Preprocessing` (or its dict), see the module doc.
    8-bit RGB/grey images under per-image normalisation are resized in uint8 by Pillow before
    conversion (the expensive part of decoding is then done on few pixels); other images are
    normalised first, then resized. Non-square images are padded (edge reflection) to a square
    so cells keep their shape.
    """
    prep = as_preprocessing(channels)
    raw = read_raw(path, draft_size=size, prep=prep)
    if raw.dtype == np.uint8 and (raw.ndim == 2 or raw.shape[-1] in (1, 3)) and prep.channels is None \
            and (prep.normalisation == "per-image" or (prep.normalisation == "bit-depth" and prep.bit_depth in (None, 8))):
        img = _resize_uint8(_pad_square(raw), size)
        return to_three_channels(img.astype(np.float32) * (1.0 / 255.0), None, path)
    unit = to_model_input(raw, prep, path)
    return _resize_float(_pad_square(unit), size)


def _pad_square(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    if h == w:
        return arr
    d = abs(h - w)
    pad = [(d // 2, d - d // 2), (0, 0)] if h < w else [(0, 0), (d // 2, d - d // 2)]
    pad += [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="reflect" if min(h, w) > d // 2 + 1 else "edge")


def _resize_uint8(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return np.ascontiguousarray(arr)
    im = Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr))
    return np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=2.0))


def _resize_float(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return np.ascontiguousarray(arr, dtype=np.float32)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(arr[..., c])).resize((size, size), Image.BILINEAR))
        for c in range(arr.shape[-1])
    ]
    return np.stack(chans, axis=-1).astype(np.float32)


def save_preview(src, dst_png, max_side: int = 512, channels=None) -> Path:
    """Contrast-stretched 8-bit PNG for the browser (TIFF and 16-bit cannot be shown as is),
    read exactly as the model reads it (`channels`: indices or the model's `Preprocessing`)."""
    img = read_image(src, channels)
    im = Image.fromarray((img * 255.0 + 0.5).astype(np.uint8))
    im.thumbnail((max_side, max_side), Image.BILINEAR)
    dst = Path(dst_png)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    im.save(tmp, format="PNG")
    tmp.replace(dst)
    return dst


def describe(path, prep=None) -> dict:
    """What the reader made of a file: format, the file's axes/shape/dtype, where the axes came
    from, and the (H, W[, C]) plane the model gets. Raises ImageReadError."""
    path, z = split_plane(path)
    prep = as_preprocessing(prep)
    if z is not None:
        prep = replace(prep, stack="plane", plane=z)
    dec = decode(path)
    plane = to_plane(dec, prep, path)
    return {"format": dec.fmt, "axes": dec.axes, "file_axes": dec.file_axes, "shape": tuple(dec.data.shape),
            "dtype": str(_native(dec.data[:0]).dtype) if dec.data.ndim else str(dec.data.dtype),
            "axes_from": dec.axes_from, "plane": tuple(plane.shape), "notes": list(dec.notes)}


# ---------------------------------------------------------------- folders

def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def list_images(folder, recursive: bool = True) -> list[Path]:
    """Image files under `folder` (by suffix), sorted, hidden files and folders left out; an
    OME-Zarr folder (``*.zarr``) is one image (its chunks are not listed)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{folder}' does not exist or is not a folder")
    it: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, root)
                  and (p.is_file() or (p.suffix.lower() == ZARR_SUFFIX and p.is_dir()))
                  and not any(part.lower().endswith(ZARR_SUFFIX) for part in p.relative_to(root).parts[:-1]))


def image_key(path, root) -> str:
    """The image's identity everywhere in scopeloop: its path relative to the image root.

    Symbolic links are not resolved: labs often link images in from other folders. Always valid
    UTF-8: bytes of a non-UTF-8 name are written \\xNN (`display_path`); `path_for_key` inverts."""
    return display_path(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix())


_ESCAPED = re.compile(r"\\x([0-9a-fA-F]{2})")


def path_for_key(root, key: str) -> Path:
    """The file an image key names under `root` (inverse of `image_key`, non-UTF-8 names too)."""
    p = Path(root) / key
    if p.exists() or "\\x" not in key:
        return p
    raw = _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)) if int(m.group(1), 16) >= 0x80
                       else m.group(0), key)
    return Path(root) / raw  # lone surrogates = the original bytes (os.fsencode surrogateescape)


def scan_imagefolder(root) -> tuple[list[tuple[Path, str]], list[str]]:
    """ImageFolder layout (one sub-folder per class) -> [(path, class)], sorted class names."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(
            f"'{root}' has no class sub-folders; expected ImageFolder layout <root>/<class>/<image>"
        )
    items = [(p, c) for c in classes for p in list_images(root / c)]
    return items, classes


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
    re-running init on a grown folder does not move the embedding space. Raises ValueError."""
    old = as_preprocessing(dict(stored or {}, channels=channels))
    given = {k: v for k, v in (choices or {}).items() if k in READING_CHOICES and v is not None}
    if "plane" in given and "stack" not in given:
        given["stack"] = "plane"  # a plane number means: read that plane
    if "normalisation" in given and given["normalisation"] != old.normalisation:
        old = replace(old, normalisation="per-image", ranges=None, bit_depth=None)
    if "stack" in given and given["stack"] != old.stack:
        old = replace(old, plane=None)
    want = {k: given.get(k, getattr(old, k)) for k in READING_CHOICES}
    if stored and all(want[k] == getattr(old, k) for k in READING_CHOICES):
        return old
    return reading_settings(paths, channels=channels, sample=sample, **want)
