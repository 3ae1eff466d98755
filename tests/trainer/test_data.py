import random

import torch

from trainer.data import augment, class_weights, stratified_split


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
