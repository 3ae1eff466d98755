"""Consensus labels (trainer.stats.consensus) on synthetic teams: fast, numpy only."""
import numpy as np
import pytest

from trainer.stats.consensus import Vote, consensus, last_annotation, leave_one_out, votes_from_snapshot

CLASSES = ["A", "B", "C"]


def _team(seed=0, n=300, overlap=150):
    """Three classes; annotators: two good ones (90%), a careless one (35% right, else random)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    acc = {"ann": 0.9, "bob": 0.9, "careless": 0.35}
    votes = []
    for i in range(n):
        who = rng.choice(list(acc), 3 if i < overlap else 1, replace=False)
        for a in who:
            lab = y[i] if rng.random() < acc[a] else rng.integers(0, 3)
            votes.append(Vote(i, str(a), CLASSES[lab]))
    return y, votes


def test_two_agree_against_one_gives_the_majority_label():
    votes = [Vote(1, "ann", "A", "2024-01-01T10:00"), Vote(1, "bob", "A", "2024-01-01T10:05"),
             Vote(1, "cy", "B", "2024-01-01T10:09")]  # the third, disagreeing annotation came last
    assert last_annotation(votes) == {1: "B"}
    for kw in ({}, {"majority_first": True}, {"method": "majority"}):
        c = consensus(votes, classes=CLASSES, **kw)
        t = c.tasks[1]
        assert t.label == "A" and t.disputed and t.confidence > 0.5 and t.n_votes == 3
        assert c.conflicts() == [1]


def test_a_reviewer_settles_a_conflict_and_overrides_the_majority():
    votes = [Vote(1, "ann", "A"), Vote(1, "bob", "A"), Vote(1, "dr_path", "B"), Vote(2, "ann", "C")]
    c = consensus(votes, classes=CLASSES, reviewers={"dr_path"})
    assert c.tasks[1].label == "B" and c.tasks[1].rule == "reviewer" and c.tasks[1].confidence == 1.0
    assert c.tasks[1].reviewed_by == "dr_path" and c.conflicts() == []  # not disputed among annotators: settled anyway
    assert c.tasks[2].label == "C" and c.tasks[2].rule == "single"
    assert c.annotators["dr_path"].reviewer and c.summary()["reviewed"] == 1
    # a reviewer's label is also the truth the annotators' reliability is learned from
    np.testing.assert_allclose(c.soft_labels([1])[0], [0, 1, 0])
    # the latest of two reviewers wins
    votes.append(Vote(1, "head", "C", "2099"))
    assert consensus(votes, classes=CLASSES, reviewers={"dr_path", "head"}).tasks[1].label == "C"


def test_dawid_skene_weights_a_careless_annotator_less():
    y, votes = _team()
    c = consensus(votes, classes=CLASSES)
    rel = c.annotators
    assert rel["careless"].accuracy < rel["ann"].accuracy - 0.2 and rel["careless"].accuracy < rel["bob"].accuracy - 0.2
    assert rel["careless"].interval[1] < rel["ann"].interval[0]
    assert rel["ann"].n >= 100 and rel["ann"].n_total > rel["ann"].n  # n: the shared tasks behind the estimate
    # on a task where only the careless one disagrees with one good annotator, the good one wins
    tie = [Vote("x", "ann", "A"), Vote("x", "careless", "B")]
    assert consensus(votes + tie, classes=CLASSES).tasks["x"].label == "A"
    assert consensus(votes + [Vote("z", "careless", "B"), Vote("z", "ann", "A")], classes=CLASSES).tasks["z"].label == "A"
    # and on the overlap, the weighted consensus is right at least as often as majority vote
    lab, mv = c.labels(), consensus(votes, classes=CLASSES, method="majority").labels()
    right = lambda d: np.mean([d[i] == CLASSES[y[i]] for i in range(150)])  # noqa: E731
    assert right(lab) >= right(mv) and right(lab) > 0.9


def test_few_shared_labels_are_not_over_trusted():
    """Two shared tasks say little: the smoothed estimate stays near the prior, not at 0 or 1."""
    votes = [Vote(1, "a", "A"), Vote(1, "b", "B"), Vote(2, "a", "C"), Vote(2, "b", "A")]
    c = consensus(votes, classes=CLASSES)
    for r in c.annotators.values():
        assert 0.6 < r.accuracy < 0.85 and r.n == 2
        assert r.interval[0] < 0.6 and r.interval[1] > 0.85


def test_systematic_confusion_is_learned():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    votes = []
    for i in range(400):
        for a in ("ann", "bob", "conf") if i < 200 else (rng.choice(["ann", "bob", "conf"]),):
            lab = y[i] if rng.random() < 0.92 else rng.integers(0, 3)
            if a == "conf" and y[i] == 1 and rng.random() < 0.7:
                lab = 0  # labels B as A
            votes.append(Vote(i, a, CLASSES[lab]))
    c = consensus(votes, classes=CLASSES)
    rates = c.annotators["conf"].rates
    assert rates[1, 0] > 0.5 and c.annotators["ann"].rates[1, 0] < 0.15
    # conf's lone "A" is less sure than ann's lone "A"
    extra = consensus(votes + [Vote("p", "conf", "A"), Vote("q", "ann", "A")], classes=CLASSES)
    assert extra.tasks["p"].confidence < extra.tasks["q"].confidence
    # leave-one-out: conf's own vote divided out of a disputed task
    t = next(t for t, tc in c.tasks.items() if tc.disputed and tc.votes.get("conf") == "A" and len(tc.votes) == 3)
    loo = leave_one_out(c, t, "conf")
    assert loo.sum() == pytest.approx(1)


def test_training_set_counts_a_task_once_with_its_confidence():
    y, votes = _team(seed=1)
    c = consensus(votes, classes=CLASSES)
    tasks, yy, w = c.training_set()
    assert len(tasks) == len(set(tasks)) == 300 and yy.shape == w.shape == (300,)
    assert ((0 < w) & (w <= 1)).all()
    kept, _, w2 = c.training_set(min_confidence=0.9)
    assert len(kept) < 300 and (w2 >= 0.9).all()
    assert c.soft_labels().shape == (300, 3)
    d = c.to_dict()
    assert d["summary"]["tasks"] == 300 and len(d["annotators"]) == 3


def test_snapshot_votes_latest_per_annotator_and_unknown_labels_dropped():
    snap = {"tasks": {
        "7": {"key": "k.png", "label": "B", "annotations": [
            {"id": 1, "label": "A", "annotator": "ann", "created_at": "2024-01-01", "updated_at": "2024-01-01"},
            {"id": 2, "label": "B", "annotator": "ann", "created_at": "2024-01-02", "updated_at": "2024-01-03"},
            {"id": 3, "label": "Unusable image", "annotator": "bob", "created_at": "2024-01-02", "updated_at": None},
            {"id": 4, "label": "A", "annotator": None, "created_at": "2024-01-02", "updated_at": None}]}}}
    votes = votes_from_snapshot(snap)
    assert len(votes) == 4 and votes[3].annotator == "anonymous#4"
    c = consensus(votes, classes=CLASSES)
    assert c.tasks["7"].votes == {"ann": "B", "anonymous#4": "A"} and c.tasks["7"].disputed


def test_bad_method_and_empty_input():
    with pytest.raises(ValueError):
        consensus([], method="vote")
    c = consensus([], classes=CLASSES)
    assert c.tasks == {} and c.training_set()[1].shape == (0,)
