import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.trainer.conftest import blob_image
from trainer.images import (ImageReadError, SkipReport, image_key, list_images, load_for_model, read_image,
                            save_preview, scan_imagefolder)


def test_jpeg_from_dev_set_reads_as_rgb_unit_range(bccd):
    img = read_image(next((bccd / "Lymphocyte").iterdir()))
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_dim_16bit_tiff_is_stretched_to_full_range(tmp_path):
    arr = blob_image(np.random.default_rng(1), 0)  # values ~100..400 of 65535
    tifffile.imwrite(tmp_path / "dim.tif", arr)
    img = read_image(tmp_path / "dim.tif")
    assert img.shape == (64, 64, 3)
    assert img.max() > 0.95 and img.min() < 0.05  # a fixed /65535 would give max ~0.006
    assert np.allclose(img[..., 0], img[..., 1])  # grayscale copied to R, G, B


@pytest.mark.parametrize("channel_first", [True, False])
def test_five_channel_tiff_maps_to_three(tmp_path, channel_first):
    arr = blob_image(np.random.default_rng(2), 1, channels=5, channel_first=channel_first)
    tifffile.imwrite(tmp_path / "mc.tif", arr)
    assert read_image(tmp_path / "mc.tif").shape == (64, 64, 3)
    picked = read_image(tmp_path / "mc.tif", channels=[4])
    assert np.allclose(picked[..., 0], picked[..., 2])
    two = read_image(tmp_path / "mc.tif", channels=[0, 3])
    assert two[..., 2].max() == 0.0 and two[..., 1].max() > 0.9


def test_channel_choice_out_of_range_names_file(tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", blob_image(np.random.default_rng(3), 2))
    with pytest.raises(ImageReadError, match="g.tif.*channels"):
        read_image(tmp_path / "g.tif", channels=[0, 7])


def test_float_and_8bit_png_and_16bit_png(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.random.default_rng(0).normal(size=(32, 40)).astype(np.float32))
    assert read_image(tmp_path / "f.tif").shape == (32, 40, 3)
    Image.fromarray((np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (64, 64, 3)
    Image.fromarray(blob_image(np.random.default_rng(0), 0)).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").max() > 0.95


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"this is a text file, not an image", "not a readable"),
])
def test_bad_files_raise_naming_the_file(tmp_path, content, reason):
    for name in ("bad.png", "bad.tif"):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError, match=f"{name}.*{reason}"):
            read_image(tmp_path / name)


def test_truncated_jpeg_raises(tmp_path, bccd):
    data = next((bccd / "Monocyte").iterdir()).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_3d_stack_is_refused_with_advice(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((4, 5, 64, 64), np.uint16))
    with pytest.raises(ImageReadError, match="one 2-D plane"):
        read_image(tmp_path / "z.tif")


def test_load_for_model_pads_and_resizes(tmp_path, bccd):
    Image.fromarray(np.full((40, 80, 3), 128, np.uint8)).save(tmp_path / "wide.png")
    assert load_for_model(tmp_path / "wide.png", 32).shape == (32, 32, 3)
    tifffile.imwrite(tmp_path / "t.tif", blob_image(np.random.default_rng(0), 0, size=50))
    out = load_for_model(tmp_path / "t.tif", 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32


def test_preview_of_16bit_is_visible_png(tmp_path):
    tifffile.imwrite(tmp_path / "dim.tif", blob_image(np.random.default_rng(0), 0, size=300))
    dst = save_preview(tmp_path / "dim.tif", tmp_path / "prev" / "dim.png", max_side=128)
    im = Image.open(dst)
    assert im.format == "PNG" and max(im.size) == 128 and im.mode == "RGB"
    assert np.asarray(im).max() > 240


def test_folder_listing_keys_and_report(tmp_path, bccd):
    items, classes = scan_imagefolder(bccd)
    assert classes == ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
    assert len(items) == 351
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert [p.name for p in list_images(tmp_path)] == ["a.png"]
    assert image_key(items[0][0], bccd) == "Basophil/BloodImage_00008_1.jpg"
    rep = SkipReport()
    rep.add("x.tif", "file is empty")
    assert "x.tif: file is empty" in rep.summary() and len(rep) == 1
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        scan_imagefolder(tmp_path / ".hidden")


def test_key_of_a_linked_image_is_its_place_in_the_folder(tmp_path, bccd):
    src = next((bccd / "Monocyte").iterdir())
    (tmp_path / "pool" / "Monocyte").mkdir(parents=True)
    link = tmp_path / "pool" / "Monocyte" / "cell.jpg"
    link.symlink_to(src)
    assert [image_key(p, tmp_path / "pool") for p in list_images(tmp_path / "pool")] == ["Monocyte/cell.jpg"]
