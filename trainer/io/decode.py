"""Raw decoding: the field's readers (tifffile + imagecodecs, Pillow, bioio) turn a file into an array with named axes, then one (H, W, C) plane."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.io.best_focus import best_focus_index
from trainer.io.errors import ImageReadError
from trainer.io.formats import (
    BIOIO_FORMATS,
    FORMATS_EXTRA,
    MAX_CHANNEL_AXIS,
    MAX_DECODE_BYTES,
    MEMMAP_BYTES,
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_FORMAT,
    ZARR_SUFFIX,
)
from trainer.io.plane_keys import split_plane
from trainer.io.settings import Preprocessing, as_preprocessing


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
            if tf.is_imagej and getattr(series, "kind", "imagej") != "imagej":
                cut = _imagej_cut_short(path, tf, fmt)  # tifffile fell back to a plain page stack
                if cut is not None:
                    return cut
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


def _imagej_cut_short(path: Path, tf, fmt: str) -> Decoded | None:
    """An ImageJ (hyper)stack with fewer pages than its metadata announces (saving interrupted:
    a crash, a full disk): tifffile then offers the pages as one unnamed stack, which would be
    projected across channels and time points. ImageJ stores pages C fastest, then Z, then T
    (``channels``, ``slices``, ``frames``): the complete time points are read with their axes,
    a file without one complete time point is refused. None: not cut short."""
    ij = tf.imagej_metadata or {}
    c, z, t = (max(int(ij.get(k, 1) or 1), 1) for k in ("channels", "slices", "frames"))
    want = c * z * t if c * z * t > 1 else max(int(ij.get("images", 1) or 1), 1)
    if c * z * t == 1:
        z = want  # a plain "images=N" stack: ImageJ treats it as Z
    pages = len(tf.pages)
    if want <= 1 or pages >= want:
        return None
    full = pages // (c * z)
    layout = f"C={c}, Z={z}, T={t}"
    if full == 0:
        raise ImageReadError(path, f"is an ImageJ stack cut short: {pages} of its {want} pages ({layout}) are "
                                   "in the file, not one complete time point; save it again (e.g. Fiji)")
    page = tf.pages[0]
    data = np.stack([tf.pages[i].asarray() for i in range(full * c * z)])
    data = data.reshape((full, z, c) + data.shape[1:])
    page_axes = page.axes if len(page.axes) == data.ndim - 3 else ("YX" if data.ndim == 5 else "YXS")
    axes = "TZC" + page_axes
    dec = Decoded(data, axes, fmt, "metadata", axes, tuple(data.shape))
    dec.notes.append(f"ImageJ stack cut short: {pages} of {want} pages ({layout}); "
                     f"read the {full} complete time point(s) of {t}")
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


def max_pixels() -> int:
    """The most pixels one image may have: what Pillow refuses as a decompression bomb
    (2 x Image.MAX_IMAGE_PIXELS, 179 million by default)."""
    return 2 * int(Image.MAX_IMAGE_PIXELS or 0) or (1 << 62)


def _too_large(path: Path, pixels: int) -> ImageReadError:
    return ImageReadError(path, f"{pixels:,} pixels, over the limit of {max_pixels():,} pixels "
                                "for one image (Pillow's decompression-bomb guard): export tiles or crops "
                                "(e.g. QuPath, Fiji) and add those")


def _png_size(path: Path) -> int | None:
    """Width x height from a PNG's IHDR chunk (None if not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big")


def _read_pil(path: Path, draft_size: int | None = None) -> tuple[np.ndarray, int]:
    try:
        png = _png_header(path)
        if png is not None and png[0] == 16:
            pixels = _png_size(path) or 0
            if pixels > max_pixels():  # imagecodecs has no guard of its own
                raise _too_large(path, pixels)
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
    except Image.DecompressionBombError as exc:  # one huge image is skipped and reported, never the run
        m = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (182000000 pixels) exceeds limit ..."
        raise _too_large(path, int(m.group(1)) if m else max_pixels() + 1) from None
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


def _zarr_attrs(group: Path) -> dict:
    """The attributes of a Zarr group (v2 ``.zattrs``; v3 ``zarr.json``, NGFF 0.5 under "ome")."""
    try:
        if (group / ".zattrs").is_file():
            return json.loads((group / ".zattrs").read_text()) or {}
        if (group / "zarr.json").is_file():
            attrs = (json.loads((group / "zarr.json").read_text()) or {}).get("attributes") or {}
            return dict(attrs, **(attrs.get("ome") or {}))
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _zarr_image(path: Path) -> tuple[Path, list[str]]:
    """The image group of an OME-Zarr folder and the folder's series: the folder itself ([]),
    or, in the layout bioformats2raw writes (``bioformats2raw.layout`` at the top, the images
    in ``0/``, ``1/``..., OME-XML in ``OME/``; NGFF 0.4 "bf2raw"), its first series, which
    bioio-ome-zarr reads while the top folder holds no image of its own."""
    attrs = _zarr_attrs(path)
    if "bioformats2raw.layout" not in attrs:
        return path, []
    series = attrs.get("series") or _zarr_attrs(path / "OME").get("series") or sorted(
        (p.name for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    series = [str(s) for s in series if (path / str(s)).is_dir()]
    if not series:
        raise ImageReadError(path, "is a bioformats2raw folder without an image group (0/, 1/ ...): "
                                   "convert the file again")
    return path / series[0], series


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module already loaded without a spec
        return module in sys.modules and sys.modules[module] is not None


def _read_bioio(path: Path, fmt: str, plugin: str) -> Decoded:
    try:
        from bioio import BioImage
        if plugin == ZARR_FORMAT[1]:
            import bioio_ome_zarr  # noqa: F401 - bioio alone would only say "no plugin"
    except ImportError:
        raise ImageReadError(path, f"{fmt} files need the optional readers: {FORMATS_EXTRA} "
                                   f"(bioio + {plugin})") from None
    target, series = _zarr_image(path) if plugin == ZARR_FORMAT[1] else (path, [])
    try:
        img = BioImage(target)
    except Exception as exc:  # noqa: BLE001 - bioio raises per plugin
        if "UnsupportedFileFormat" in type(exc).__name__ or "plugin" in str(exc).lower():
            if _installed(plugin.replace("-", "_")):  # the plugin is there: it is not the cause
                raise ImageReadError(path, f"{plugin} (installed) does not recognise it as {fmt} "
                                           f"[{type(exc).__name__}]; export it as OME-TIFF (Fiji: Bio-Formats "
                                           "Exporter) and add that file") from None
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
    if series:
        dec.notes.append(f"bioformats2raw layout: series {target.name} of {len(series)}")
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
        zi = kept.index("Z")
        if prep.stack == "best-focus" and arr.shape[zi] > 1:  # brightfield: the sharpest plane, not a MIP
            rest = kept.replace("Z", "")
            planes = np.moveaxis(arr, zi, 0)
            order = [rest.index("Y"), rest.index("X")] + [i for i, a in enumerate(rest) if a in "CS"] \
                if "Y" in rest and "X" in rest else list(range(len(rest)))
            k = best_focus_index(np.transpose(p, order) for p in planes)
            dec.notes.append(f"best-focus plane {k} of {arr.shape[zi]} (variance of the Laplacian)")
            arr = np.take(arr, k, axis=zi)
        else:
            arr = arr.max(axis=zi)
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
