"""Out-of-distribution reference: thresholds, storage, sampling (numpy only: fast)."""
import numpy as np
import pytest

from trainer.stats.ood import OODReference, build_reference, sample_rows


def _cluster(rng, n, centre, spread=0.3):
    return centre + rng.normal(0, spread, (n, len(centre)))


def test_training_like_images_pass_and_far_images_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    d = 64
    centres = rng.normal(0, 1, (3, d)) + 3  # embeddings of one image source share a direction
    train = np.concatenate([_cluster(rng, 200, c) for c in centres])
    ref = build_reference(train, np.repeat([0, 1, 2], 200), k=5, quantile=0.99)
    same = np.concatenate([_cluster(rng, 100, c) for c in centres])
    other = _cluster(rng, 100, -centres[0])  # another microscope: elsewhere in embedding space
    _, flag_same = ref.flags(same)
    _, flag_other = ref.flags(other)
    assert flag_same.mean() < 0.05
    assert flag_other.mean() > 0.95
    assert ref.score(np.zeros((0, d))).shape == (0,)

    ref.save(tmp_path)
    back = OODReference.load(tmp_path)
    assert back.k == 5 and back.quantile == pytest.approx(0.99) and back.threshold == pytest.approx(ref.threshold, rel=1e-6)
    assert np.array_equal(back.flags(other)[1], flag_other)  # float16 storage keeps the decisions
    assert OODReference.load(tmp_path / "nothing") is None


def test_reference_is_capped_and_keeps_rare_classes():
    labels = np.array([0] * 5000 + [1] * 3)
    rows = sample_rows(labels, len(labels), 500, seed=0)
    assert len(rows) <= 501 and (labels[rows] == 1).sum() >= 1
    assert np.array_equal(rows, sample_rows(labels, len(labels), 500, seed=0))  # deterministic
    X = np.random.default_rng(1).normal(size=(5003, 16))
    assert len(build_reference(X, labels, max_refs=500).refs) == len(rows)


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        build_reference(np.ones((1, 8)))
