import numpy as np

from trainer.models.head import fit_head


def _clusters(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 64)) * 3
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 64))).astype(np.float32), y


def test_head_learns_separable_clusters_and_is_deterministic():
    X, y = _clusters(400)
    X, y, Xv, yv = X[:300], y[:300], X[300:], y[300:]
    head = fit_head(X, y, 3, X_val=Xv[:50], y_val=yv[:50])
    assert (head.predict_proba(Xv).argmax(1) == yv).mean() > 0.95
    again = fit_head(X, y, 3, X_val=Xv[:50], y_val=yv[:50])
    assert np.allclose(head.weight, again.weight)
    assert head.history and head.best_epoch >= 1 and head.history[0]["val_loss"] is not None


def test_class_without_labels_is_never_predicted_and_linear_matches():
    X, y = _clusters(200)
    head = fit_head(X[y < 2], y[y < 2], 3)
    p = head.predict_proba(X)
    assert p[:, 2].max() < 1e-6 and np.allclose(p.sum(1), 1)
    import torch

    lin = head.to_linear()
    with torch.no_grad():
        assert np.allclose(lin(torch.from_numpy(X)).numpy(), head.logits(X), atol=1e-3)


def test_fit_runs_on_one_torch_thread_and_restores_the_setting(monkeypatch):
    # tiny L-BFGS fits: a second thread made each ~5x slower on a busy 2-core machine
    import torch

    seen = []
    step = torch.optim.LBFGS.step
    monkeypatch.setattr(torch.optim.LBFGS, "step", lambda self, closure: seen.append(torch.get_num_threads())
                        or step(self, closure))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X, y = _clusters(60)
        fit_head(X, y, 3)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
