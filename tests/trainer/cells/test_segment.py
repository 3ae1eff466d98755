import numpy as np

from trainer.cells import CellSettings, segment_field
from trainer.cells.auto import choose_modality
from trainer.cells.synthetic import make_field, score


def test_synthetic_nuclei_found_and_pairs_split(synth):
    labels, plan = segment_field(synth.image, return_plan=True)
    s = score(synth.labels, labels, synth.pairs)
    assert plan.modality == "fluorescence"
    assert 14 < plan.diameter < 26  # radii 7-12 px
    assert s["recall"] == 1.0 and s["precision"] == 1.0
    assert s["merged_pairs"] == 0 and s["split"] == 0


def test_hot_pixel_does_not_move_the_threshold(synth):
    img = synth.image.copy()
    img[5, 5] = 65535
    s = score(synth.labels, segment_field(img), synth.pairs)
    assert s["recall"] == 1.0


def test_blank_field_has_no_cells():
    rng = np.random.default_rng(0)
    img = (1000 + rng.normal(0, 20, (200, 200))).astype(np.uint16)
    assert segment_field(img).max() == 0
    assert segment_field(np.full((100, 100, 3), 200, np.uint8)).max() == 0


def test_brightfield_read_as_fluorescence_warns(synth):
    bf = (255 - (synth.image / synth.image.max() * 200)).astype(np.uint8)
    rgb = np.stack([bf, bf, np.clip(bf.astype(int) + 20, 0, 255).astype(np.uint8)], -1)
    assert choose_modality(rgb / 255.0)[0] == "brightfield"
    labels, plan = segment_field(rgb, return_plan=True)
    assert plan.modality == "brightfield" and score(synth.labels, labels)["recall"] >= 0.95
    _, forced = segment_field(rgb, CellSettings(modality="fluorescence"), name="x.png", return_plan=True)
    assert forced.notes and "x.png looks like brightfield" in forced.notes[0]


def test_border_skip_drops_edge_cells():
    f = make_field((200, 200), n=10, pairs=0, seed=4)
    img = f.image.copy()
    img[:, :12] = img.max()  # a bright object along the left border
    kept = segment_field(img, CellSettings(border="skip"))
    assert kept.max() >= 1
    assert not kept[:, 0].any() and not kept[0].any()
