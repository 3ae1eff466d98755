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


def _discs(shape, centres, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return [(yy - y) ** 2 + (xx - x) ** 2 <= r * r for y, x in centres]


def test_pale_cells_next_to_a_dark_cell_stay_foreground():
    rng = np.random.default_rng(1)
    img = np.full((300, 400, 3), 220.0)
    pale = _discs(img.shape, [(60, 60), (60, 200), (220, 60), (220, 330)], 30)
    for m in pale:
        img[m] = (200, 175, 195)  # faint pink red cells
    img[_discs(img.shape, [(150, 250)], 55)[0]] = (60, 30, 120)  # one dark purple white cell
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    settings = CellSettings(diameter=60)
    labels = segment_field(img, settings)
    assert all(labels[m].any() and np.bincount(labels[m])[1:].max() > 0.5 * m.sum() for m in pale)
    off = segment_field(img, settings.with_(background_sds=None))
    assert sum(off[m].any() for m in pale) < len(pale)  # a two-class threshold alone loses them


def test_cluster_without_a_neck_is_split_by_area():
    from trainer.cells.auto import plan_field
    from trainer.cells.segment import split_cells

    centres = [(70, 100), (70, 160), (140, 165)]  # an L of overlapping discs, no neck between them
    discs = _discs((230, 300), centres, 40)
    mask = discs[0] | discs[1] | discs[2]
    plan = plan_field(np.where(mask, 200, 20).astype(np.uint8), CellSettings(diameter=80))
    settings = CellSettings(diameter=80, split_distance=1.0)  # the watershed alone keeps one object
    assert split_cells(mask, plan, settings.with_(split_area=None)).max() == 1
    lab = split_cells(mask, plan, settings)
    assert lab.max() == 3
    assert len({int(lab[y, x]) for y, x in centres}) == 3


def test_local_maxima_are_skimages_peaks_without_its_kd_tree():
    """The watershed's markers: the same peaks as skimage's peak_local_max (min_distance, threshold),
    found without its KD-tree step (it crashed the interpreter inside the full test suite)."""
    from scipy import ndimage as ndi
    from skimage import feature

    from trainer.cells.segment import local_maxima

    rng = np.random.default_rng(1)
    for _ in range(10):
        m = np.zeros((200, 200), bool)
        yy, xx = np.ogrid[:200, :200]
        for y, x, r in zip(rng.integers(15, 185, 25), rng.integers(15, 185, 25), rng.integers(5, 15, 25)):
            m |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        d = ndi.distance_transform_edt(m).astype(np.float32)
        md = int(rng.integers(2, 10))
        ref = feature.peak_local_max(d, min_distance=md, threshold_abs=2.0, exclude_border=False)
        assert set(map(tuple, local_maxima(d, md, 2.0))) == set(map(tuple, ref))
