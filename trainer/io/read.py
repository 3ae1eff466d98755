"""The reading pipeline end to end: file -> float32 (H, W, 3) in [0, 1] (`read_image`), and the model's square input (`load_for_model`)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from trainer.io.decode import _native, decode, read_raw, to_plane
from trainer.io.errors import ImageReadError
from trainer.io.normalise import _fixed_range, to_three_channels, to_unit_range
from trainer.io.plane_keys import split_plane
from trainer.io.settings import as_preprocessing


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
