import random

import numpy as np
import torch

from trainer.models.data import augment, class_weights, stratified_split


def test_stratified_split_keeps_every_class_and_singletons_in_train():
    labels = [0] * 50 + [1] * 10 + [2] * 2 + [3] * 1
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    val_counts = [sum(labels[r] == c for r in val) for c in range(4)]
    assert val_counts[0] == 10 and val_counts[1] == 2 and val_counts[2] == 1 and val_counts[3] == 0
    assert any(labels[r] == 3 for r in train)
    assert stratified_split(labels, 0.2, seed=0) == (train, val)  # reproducible
    assert stratified_split(labels, 0.2, seed=1) != (train, val)


def test_group_aware_split_never_straddles_a_group():
    labels = [i % 2 for i in range(60)]
    groups = [i // 4 for i in range(60)]  # 15 slides of 4 crops
    train, val = stratified_split(labels, 0.25, seed=0, groups=groups)
    assert {groups[r] for r in train}.isdisjoint({groups[r] for r in val}) and val


def test_augment_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(3, 32, 32)
    a = augment(x, random.Random(5))
    assert a.shape == x.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, augment(x, random.Random(5)))


def test_class_weights_favour_rare_classes():
    w = class_weights([0] * 90 + [1] * 10, 3)
    assert w[1] > 5 * w[0] and w[2] == 0


def test_dataset_reads_with_the_models_preprocessing(tmp_path):
    import tifffile

    from trainer.io.settings import Preprocessing
    from trainer.models.data import ImageDataset

    planes = np.full((3, 32, 32), 200, np.uint16)
    planes[0, :8, :8] = 4000   # a spot only in plane 0
    planes[2, -8:, -8:] = 1000  # a dimmer one only in plane 2
    tifffile.imwrite(tmp_path / "z.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    mean = std = (0.5, 0.5, 0.5)
    mip = ImageDataset([tmp_path / "z.tif"], None, 32, mean, std)[0][0]
    assert mip[0, 0, 0] > 0.9 and mip[0, -1, -1] > -0.9  # both spots (projection)
    one = ImageDataset([tmp_path / "z.tif"], None, 32, mean, std, {"stack": "plane", "plane": 0})[0][0]
    assert one[0, 0, 0] > 0.9 and one[0, -1, -1] < -0.9  # plane 0 only
    fixed = Preprocessing(normalisation="per-dataset", ranges=((0.0, 8000.0),))
    x = ImageDataset([tmp_path / "z.tif"], None, 32, mean, std, fixed)[0][0]
    assert abs(float(x[0, 0, 0]) - 0.0) < 0.01  # 4000 of 0..8000 -> 0.5 -> normalised 0.0
