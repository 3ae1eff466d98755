"""Project reading settings: each Z plane its own image, the 'both' normalisation, settings chosen
once at init (trainer.io.project_reading.project_reading), OME-Zarr folders, previews read like the model."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from trainer.io.decode import read_raw
from trainer.io.errors import ImageReadError
from trainer.io.folders import image_key, list_images, path_for_key
from trainer.io.plane_keys import image_exists, plane_path, split_plane
from trainer.io.planes import expand_planes, z_planes
from trainer.io.project_reading import project_reading, reading_settings
from trainer.io.read import describe, load_for_model, read_image
from trainer.io.settings import Preprocessing, reader_of


def _stack(path, n=5, size=32):
    """ImageJ Z-stack whose plane z is filled with 1000 * (z + 1) plus a bright corner."""
    planes = np.stack([np.full((size, size), 1000 * (z + 1), np.uint16) for z in range(n)])
    planes[:, :4, :4] = 60000
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "ZYX"})
    return planes


# ---------------------------------------------------------------- each plane its own image

def test_each_plane_of_a_stack_is_its_own_image(tmp_path):
    planes = _stack(tmp_path / "cells.tif")
    tifffile.imwrite(tmp_path / "flat.tif", planes[0])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    prep = Preprocessing(stack="planes")
    paths = expand_planes(list_images(tmp_path), prep)
    keys = [image_key(p, tmp_path) for p in paths]
    assert keys == ["cells.tif#z0", "cells.tif#z1", "cells.tif#z2", "cells.tif#z3", "cells.tif#z4", "flat.tif", "rgb.png"]
    assert expand_planes(list_images(tmp_path), Preprocessing()) == list_images(tmp_path)  # MIP: one per file
    assert z_planes(tmp_path / "cells.tif") == 5 and z_planes(tmp_path / "flat.tif") == 1
    for z in range(5):
        p = path_for_key(tmp_path, f"cells.tif#z{z}")
        assert image_exists(p) and split_plane(p) == (tmp_path / "cells.tif", z)
        assert np.array_equal(read_raw(p, prep=prep), planes[z])  # the plane, whatever the stack mode
        assert np.array_equal(read_raw(p), planes[z])
    # the model input of plane 1 is plane 1 (MIP of the file would be plane 4)
    bit = Preprocessing(stack="planes", normalisation="bit-depth", bit_depth=16)
    assert np.isclose(load_for_model(plane_path(tmp_path / "cells.tif", 1), 16, bit)[8, 8, 0], 2000 / 65535, atol=1e-4)
    assert np.isclose(load_for_model(tmp_path / "cells.tif", 16, bit)[8, 8, 0], 5000 / 65535, atol=1e-4)
    assert not image_exists(tmp_path / "missing.tif#z0")
    with pytest.raises(ImageReadError, match="has 5 Z plane"):
        read_raw(tmp_path / "cells.tif#z7")


def test_a_file_really_named_like_a_plane_is_that_file(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((3, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "x.tif#z1", format="PNG")
    assert split_plane(tmp_path / "x.tif#z1") == (tmp_path / "x.tif#z1", None)


# ---------------------------------------------------------------- "both"

def test_both_puts_the_fixed_range_in_green_and_per_image_in_red_and_blue(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(100, 1200, (32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", arr)
    both = Preprocessing(normalisation="both", ranges=[(0.0, 4095.0)])
    img = read_image(tmp_path / "g.tif", both)
    per_image = read_image(tmp_path / "g.tif")
    assert np.allclose(img[..., 0], per_image[..., 0]) and np.allclose(img[..., 2], per_image[..., 2])
    assert np.allclose(img[..., 1], arr / 4095.0, atol=1e-6)
    assert np.allclose(load_for_model(tmp_path / "g.tif", 32, both)[..., 1], arr / 4095.0, atol=1e-6)
    assert both.tag().startswith("nx") and "G" in both.describe()
    # several channels: refused at the settings (init) and per file, naming the fix
    tifffile.imwrite(tmp_path / "c2.tif", rng.integers(0, 999, (2, 32, 32)).astype(np.uint16))
    with pytest.raises(ValueError, match="single-channel"):
        reading_settings([tmp_path / "c2.tif"], normalisation="both")
    two = Preprocessing(normalisation="both", ranges=[(0.0, 999.0), (0.0, 999.0)])
    with pytest.raises(ImageReadError, match="c2.tif.*single-channel"):
        read_image(tmp_path / "c2.tif", two)
    assert read_image(tmp_path / "c2.tif", Preprocessing(normalisation="both", ranges=two.ranges, channels=(1,))).shape == (32, 32, 3)


# ---------------------------------------------------------------- chosen once at init

def test_project_reading_computes_ranges_once_and_keeps_them(tmp_path):
    for i in range(4):
        tifffile.imwrite(tmp_path / f"a{i}.tif", np.full((16, 16), 100 * (i + 1), np.uint16))
    pool = list_images(tmp_path)
    assert project_reading(pool, None, None).is_default  # nothing chosen, nothing stored
    first = project_reading(pool, {"normalisation": "per-dataset", "stack": None})
    assert first.normalisation == "per-dataset" and first.ranges[0][1] == pytest.approx(400, abs=1)
    stored = first.to_dict()
    # the pool grows brighter: re-running init without choices, or with the same ones, keeps the ranges
    tifffile.imwrite(tmp_path / "bright.tif", np.full((16, 16), 9000, np.uint16))
    pool = list_images(tmp_path)
    assert project_reading(pool, None, stored) == first
    assert project_reading(pool, {"normalisation": "per-dataset"}, stored) == first
    # a new choice is computed anew; other stored choices stay
    stack = project_reading(pool, {"stack": "planes"}, stored)
    assert stack.stack == "planes" and stack.normalisation == "per-dataset" and stack.ranges != first.ranges
    bits = project_reading(pool, {"normalisation": "bit-depth"}, stored)
    assert bits.normalisation == "bit-depth" and bits.ranges is None and bits.bit_depth == 14
    assert project_reading(pool, {"plane": 2}, stored).stack == "plane"  # a plane number alone means that plane
    assert reader_of({"preprocessing": stored, "channels": [0]}) == Preprocessing(**dict(first.to_dict(), channels=(0,)))



# ---------------------------------------------------------------- brightfield stacks: best focus

def _brightfield_stack(path, focus=4, n=9, size=64):
    """Dark cells on a bright background, sharp at plane `focus`, blurred more with distance."""
    from skimage.filters import gaussian

    sharp = np.full((size, size), 200.0)
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in ((16, 16), (40, 22), (24, 46), (48, 48)):
        sharp[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 60.0
    planes = np.stack([gaussian(sharp, sigma=0.01 + 1.5 * abs(z - focus), preserve_range=True) for z in range(n)])
    planes = planes.round().astype(np.uint8)
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "ZYX"})
    return planes


def test_brightfield_stacks_default_to_the_best_focus_plane(tmp_path):
    """Issue 22 (6): a MIP of a brightfield stack keeps every pixel's brightest (most defocused)
    value: about 30 % of the cells' contrast left on 9 planes. A first init picks best focus."""
    planes = _brightfield_stack(tmp_path / "bf.tif")
    prep = project_reading([tmp_path / "bf.tif"])
    assert prep.stack == "best-focus" and "best-focus" in prep.describe() and prep.tag() == "zbest"
    raw = read_raw(tmp_path / "bf.tif", prep=prep)
    assert np.array_equal(raw, planes[4])
    contrast = lambda a: float(np.percentile(a, 99)) - float(np.percentile(a, 1))  # noqa: E731
    assert contrast(raw) > 2 * contrast(planes.max(0))  # the projection washes the cells out
    assert any("best-focus plane 4 of 9" in n for n in describe(tmp_path / "bf.tif", prep)["notes"])
    assert reader_of({"preprocessing": prep.to_dict()}) == prep
    # fluorescence (bright spots on a dark background) stays a maximum projection
    fl = tmp_path / "fl"
    fl.mkdir()
    tifffile.imwrite(fl / "spots.tif", (255 - planes).astype(np.uint8) // 4, imagej=True, metadata={"axes": "ZYX"})
    assert project_reading([fl / "spots.tif"]).stack == "mip"
    # the user's choice and an earlier init's settings win
    assert project_reading([tmp_path / "bf.tif"], {"stack": "mip"}).stack == "mip"
    assert project_reading([tmp_path / "bf.tif"], None, Preprocessing().to_dict()).stack == "mip"


# ---------------------------------------------------------------- OME-Zarr

def _zarr_folder(root):
    z = root / "plate.zarr"
    (z / "0" / "0").mkdir(parents=True)
    (z / ".zattrs").write_text('{"multiscales": [{"version": "0.4", "datasets": [{"path": "0"}]}]}')
    (z / "0" / ".zarray").write_text("{}")
    (z / "0" / "0" / "0").write_bytes(b"\x00" * 16)
    return z


def test_ome_zarr_folder_is_one_image_and_names_its_reader(tmp_path):
    z = _zarr_folder(tmp_path)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint16))
    assert list_images(tmp_path) == [tmp_path / "a.tif", z]  # its chunk files are not images
    assert image_exists(z)
    if importlib.util.find_spec("bioio_ome_zarr") is None:
        with pytest.raises(ImageReadError, match=r"plate.zarr.*OME-Zarr.*pip install 'scopeloop\[formats\]'.*bioio-ome-zarr"):
            read_raw(z)



def _bioformats2raw_folder(root, pixels):
    """The layout bioformats2raw writes: a top group holding only "bioformats2raw.layout", the
    image in 0/ (NGFF 0.4 multiscales over a Zarr v2 array, uncompressed) and OME/ metadata."""
    z = root / "converted.zarr"
    (z / "0" / "0").mkdir(parents=True)
    (z / "OME").mkdir()
    (z / ".zgroup").write_text('{"zarr_format": 2}')
    (z / ".zattrs").write_text('{"bioformats2raw.layout": 3}')
    (z / "OME" / ".zgroup").write_text('{"zarr_format": 2}')
    (z / "OME" / ".zattrs").write_text('{"series": ["0"]}')
    (z / "OME" / "METADATA.ome.xml").write_text('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"/>')
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    (z / "0" / ".zgroup").write_text('{"zarr_format": 2}')
    (z / "0" / ".zattrs").write_text(json.dumps({"multiscales": [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 1, 1]}]}]}]}))
    (z / "0" / "0" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": list(pixels.shape), "chunks": list(pixels.shape), "dtype": "<u2",
        "compressor": None, "fill_value": 0, "order": "C", "filters": None, "dimension_separator": "/"}))
    chunk = z / "0" / "0" / "/".join(["0"] * pixels.ndim)
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(pixels.astype("<u2").tobytes())
    return z


class UnsupportedFileFormatError(Exception):
    """bioio's error when no installed plugin recognises a path."""


def _fake_bioio(monkeypatch):
    """bioio + bioio-ome-zarr as installed, for machines without the formats extra: like the
    plugin, a group is an image only if its own attributes hold "multiscales"."""
    import sys
    import types

    class BioImage:
        def __init__(self, path):
            path = Path(path)
            attrs = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() else {}
            if "multiscales" not in attrs:
                raise UnsupportedFileFormatError(f"bioio does not support the image: '{path}'")
            meta = json.loads((path / "0" / ".zarray").read_text())
            raw = next(p for p in (path / "0").rglob("*") if p.is_file() and not p.name.startswith("."))
            self.data = np.frombuffer(raw.read_bytes(), "<u2").reshape(meta["shape"])
            self.dims = types.SimpleNamespace(order="TCZYX")
            self.scenes = ("Image:0",)

    spec = importlib.machinery.ModuleSpec("bioio_ome_zarr", None)
    monkeypatch.setitem(sys.modules, "bioio", types.SimpleNamespace(BioImage=BioImage))
    monkeypatch.setitem(sys.modules, "bioio_ome_zarr", types.SimpleNamespace(__spec__=spec))


def test_bioformats2raw_folder_reads_its_first_series(tmp_path, monkeypatch):
    """Issue 22 (6): the top folder of a bioformats2raw conversion holds no image of its own;
    bioio-ome-zarr, installed, refused it and the message asked to install bioio-ome-zarr."""
    pixels = np.zeros((1, 2, 3, 8, 8), np.uint16)  # T C Z Y X
    pixels[0, 1, 2] = 700
    pixels[0, 0, 1] = 300
    z = _bioformats2raw_folder(tmp_path, pixels)
    assert list_images(tmp_path) == [z]
    if importlib.util.find_spec("bioio_ome_zarr") is None:
        _fake_bioio(monkeypatch)
    raw = read_raw(z)
    assert raw.shape == (8, 8, 2) and raw[0, 0].tolist() == [300, 700]  # MIP over Z, C last
    assert any("bioformats2raw" in n for n in describe(z)["notes"])
    (tmp_path / "empty.zarr").mkdir()  # installed, but no image there: says so, no "pip install"
    with pytest.raises(ImageReadError, match=r"empty.zarr.*bioio-ome-zarr \(installed\) does not recognise it as OME-Zarr") as e:
        read_raw(tmp_path / "empty.zarr")
    assert "pip install" not in str(e.value)


# ---------------------------------------------------------------- previews

def test_preview_shows_what_the_model_sees(tmp_path):
    from ml_backend.labelstudio.project_setup import PREVIEW_STAMP, _browser_file, _previews_stale

    Image.fromarray(np.full((16, 16), 40, np.uint8)).save(tmp_path / "dim.png")
    _stack(tmp_path / "st.tif", n=3, size=16)
    prev = tmp_path / "previews"
    # per-image: an 8-bit PNG is shown as is; per-dataset: the model's mapping, as a preview
    assert _browser_file(tmp_path / "dim.png", prev / "dim.png.png") == (tmp_path / "dim.png", False)
    fixed = Preprocessing(normalisation="per-dataset", ranges=[(0.0, 80.0)])
    shown, made = _browser_file(tmp_path / "dim.png", prev / "dim.png.png", fixed)
    assert made and np.asarray(Image.open(shown))[..., 0].max() == 128  # 40 of 0-80
    # a plane task's preview is that plane
    shown, made = _browser_file(plane_path(tmp_path / "st.tif", 0), prev / "st.tif#z0.png",
                                Preprocessing(stack="planes", normalisation="bit-depth", bit_depth=16))
    assert made and np.asarray(Image.open(shown))[10, 10, 0] == round(1000 / 65535 * 255)
    # previews made under other settings are stale (remade in place)
    assert not _previews_stale(prev, Preprocessing())
    (prev / PREVIEW_STAMP).write_text(fixed.tag())
    assert _previews_stale(prev, Preprocessing()) and not _previews_stale(prev, fixed)


# ---------------------------------------------------------------- batch predict

@pytest.mark.slow
def test_batch_predict_gives_one_row_per_plane(tmp_path):
    import csv

    from trainer.models.model import ModelConfig, ScopeModel
    from trainer.reports.batch_predict import predict_folder

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _stack(imgs / "cells.tif", n=3, size=32)
    tifffile.imwrite(imgs / "flat.tif", np.zeros((32, 32), np.uint16))
    cfg = ModelConfig(["a", "b"], image_size=32, features="final", preprocessing=Preprocessing(stack="planes").to_dict())
    ScopeModel.new(cfg).save(tmp_path / "model")
    out = predict_folder(tmp_path / "model", imgs, tmp_path / "p.csv", progress=False, ood=False, plot=False, quality=False)
    with open(tmp_path / "p.csv", newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    assert out["predicted"] == 4 and files == ["cells.tif#z0", "cells.tif#z1", "cells.tif#z2", "flat.tif"]


def test_dataset_export_writes_a_plane_as_its_own_tiff(tmp_path):
    from trainer.reports.export_dataset import _plane_file
    from trainer.reports.export_paths import _place

    planes = _stack(tmp_path / "cells.tif", n=3, size=16)
    assert _plane_file("plate 1/cells.tif#z2") == "plate 1/cells_z2.tif" and _plane_file("a/b.png") == "a/b.png"
    assert _place(plane_path(tmp_path / "cells.tif", 2), tmp_path / "out.tif", "copy") == "plane"
    assert np.array_equal(tifffile.imread(tmp_path / "out.tif"), planes[2])


def test_dataset_export_copies_an_ome_zarr_folder_whole(tmp_path):
    from trainer.reports.export_paths import _place

    z = _zarr_folder(tmp_path)
    assert _place(z, tmp_path / "out.zarr", "copy") == "copy"
    assert (tmp_path / "out.zarr" / "0" / "0" / "0").read_bytes() == b"\x00" * 16


@pytest.mark.slow
def test_report_says_how_images_are_read(bccd, tmp_path):
    from trainer.models.training import TrainConfig, save_version, train
    from trainer.reports.html import build_report
    from trainer.store.workspace import Workspace

    classes = ["Lymphocyte", "Neutrophil"]
    paths = [p for c in classes for p in sorted((bccd / c).iterdir())[:4]]
    ws = Workspace(tmp_path / "work")
    ws.update_project(images_root=str(bccd), classes=classes)
    cfg = TrainConfig(image_size=32, preprocessing=Preprocessing(normalisation="bit-depth", bit_depth=8).to_dict())
    save_version(train(paths, [p.parent.name for p in paths], classes, cfg), cfg, ws.registry)
    summary = build_report(ws, tmp_path / "r.html")
    assert summary["reading"].endswith("fixed /255 (bit depth)")
    assert "Images read as: maximum-intensity projection over Z" in (tmp_path / "r.html").read_text()
