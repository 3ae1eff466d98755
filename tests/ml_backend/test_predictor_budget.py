"""Issue 22: /predict works to a time budget under Label Studio's 100 s timeout and answers with
what it has (before: up to SCOPELOOP_PREDICT_MAX_COMPUTE=512 uncached images in one request,
projected at 84-159 s on a busy machine). Fixtures from test_predictor.py."""
import time

from tests.ml_backend.test_predictor import N_CACHED, lite_config, project, task, trained_base  # noqa: F401


def test_uncached_images_are_computed_until_the_budget_then_reported(project, monkeypatch):
    import trainer.models.inference
    from ml_backend.predictor import Predictor

    real, calls = trainer.models.inference.run_model, []

    def slow(*a, **k):  # a busy machine: every batch takes 0.4 s more
        calls.append(len(a[1]))
        time.sleep(0.4)
        return real(*a, **k)

    monkeypatch.setattr(trainer.models.inference, "run_model", slow)
    uncached = project["keys"][N_CACHED:]  # 5 images
    p = Predictor(project["ws"], batch_size=2, time_budget_s=0.3)
    out = p.predict([task(i, k) for i, k in enumerate(project["keys"])], lite_config())
    assert len(out.results) == len(project["keys"])  # one answer per task, in order
    assert calls == [2]  # the first batch ran over the budget: no second one
    assert out.counts == {"cached": N_CACHED, "computed": 2, "empty": 3}
    assert any("time budget" in e and "3 image(s)" in e for e in out.errors)
    # the next request goes on where this one stopped
    out = p.predict([task(i, k) for i, k in enumerate(uncached)], lite_config())
    assert out.counts["computed"] >= 4 and calls[1] == 2


def test_budget_from_the_environment(project, monkeypatch):
    from ml_backend.predictor import BUDGET_ENV, DEFAULT_BUDGET_S, Predictor

    assert Predictor(project["ws"]).time_budget_s == DEFAULT_BUDGET_S < 100
    monkeypatch.setenv(BUDGET_ENV, "12.5")
    assert Predictor(project["ws"]).time_budget_s == 12.5
