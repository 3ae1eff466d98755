#!/usr/bin/env python
"""Consensus benchmark (issue 26): simulated annotator teams on the dev sets.

A team of four labels the images of a dev set (their folder labels are the truth):
`good_1` and `good_2` (right 92% / 88% of the time, errors spread over the other classes), a
`careless` one (right 55%) and a `confuser` (right 92%, but labels images of class B as class
A 60% of the time: `--confusion B:A`). At a fixed labeling effort of E annotations, a share s of
the tasks is labeled by k annotators (drawn at random), the rest by one, so the number of
labeled images is E / (1 + s (k - 1)). Per repeat and setting, one simulated team's votes; the
training label of each task by each rule:

* `last`: the latest annotation (what scopeloop trained on before consensus);
* `majority`: majority vote, ties broken at random;
* `consensus`: trainer.stats.consensus.consensus (Dawid-Skene, smoothed; the shipped default);
* `consensus_mf`: the same with `majority_first=True` (a strict majority decides first);
* `truth`: the folder label (upper bound); `no_overlap`: all E annotations on distinct images.

Measured: the share of training labels that are right (all tasks; on the tasks several people
labeled), and the macro-F1 on a held-out stratified test split of the shipped quick head
(trainer.models.head.fit_head) trained on the multiscale embeddings with those labels; paired
differences (consensus minus last / majority) with a 95% interval over repeats. Then the
agreement statistic: Krippendorff's alpha of the same team on U shared tasks, its bootstrap 95%
interval, repeated `--alpha-reps` times, against the team's true alpha (the same design on
200,000 tasks): the coverage.

    python scripts/benchmark_consensus.py --data ../shared/data --cache /tmp/scopeloop_publishable
    python scripts/benchmark_consensus.py --data ../shared/data --sets bccd_wbc --reps 5 --alpha-reps 50

Embeddings come from scripts/benchmark_label_efficiency.embed_dataset (cached per set under
--cache: <cache>/<set>/embeddings.npz; computed when missing, minutes on a CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from benchmark_label_efficiency import macro_f1  # noqa: E402  (the same score as the label-efficiency benchmark)
from trainer.stats.agreement import alpha as kalpha  # noqa: E402
from trainer.stats.agreement import unit_counts  # noqa: E402
from trainer.stats.consensus import Vote, consensus, last_annotation  # noqa: E402

TEAM = {"good_1": 0.92, "good_2": 0.88, "careless": 0.55, "confuser": 0.92}
CONFUSE_P = 0.6
RULES = ["last", "majority", "consensus", "consensus_mf", "truth"]


# ----------------------------------------------------------------------------- simulation


def team_matrices(C: int, b: int, a: int) -> dict[str, np.ndarray]:
    """P(label | truth) (C, C) per annotator: accuracy on the diagonal, errors uniform; the
    confuser answers a for truth b with CONFUSE_P."""
    out = {}
    for name, acc in TEAM.items():
        M = np.full((C, C), (1 - acc) / (C - 1))
        np.fill_diagonal(M, acc)
        if name == "confuser":
            M[b] = (1 - CONFUSE_P) * M[b] / M[b].sum()
            M[b, a] += CONFUSE_P
        out[name] = M
    return out


def simulate_votes(rng, y_true, overlapped, k, mats) -> list[Vote]:
    """Votes on tasks 0..len(y_true)-1; tasks in `overlapped` get k distinct annotators (drawn
    at random), the others one; the order of the votes (their `time`) is random."""
    names = list(mats)
    y_true = np.asarray(y_true)
    n = len(y_true)
    who = np.argsort(rng.random((n, len(names))), 1)[:, :k]   # k distinct annotators per task
    n_per = np.where(np.asarray(overlapped, bool), k, 1)
    t = np.repeat(np.arange(n), n_per)
    a = np.concatenate([who[i, :n_per[i]] for i in range(n)]) if n else np.zeros(0, int)
    cum = np.cumsum(np.stack([mats[m] for m in names]), 2)     # (A, C, C)
    lab = (rng.random(len(t))[:, None] > cum[a, y_true[t]]).sum(1)
    lab = np.minimum(lab, cum.shape[2] - 1)
    times = rng.permutation(len(t))
    return [Vote(int(i), names[j], str(int(c)), f"{tm:09d}") for i, j, c, tm in zip(t, a, lab, times)]


def majority_random_ties(rng, votes, n_tasks, C) -> np.ndarray:
    counts = np.zeros((n_tasks, C))
    for v in votes:
        counts[v.task, int(v.label)] += 1
    out = np.empty(n_tasks, np.int64)
    for i in range(n_tasks):
        top = np.flatnonzero(counts[i] == counts[i].max())
        out[i] = rng.choice(top)
    return out


def rule_labels(rng, votes, n_tasks, C, y_true) -> dict[str, np.ndarray]:
    classes = [str(c) for c in range(C)]
    last = last_annotation(votes)
    out = {"last": np.array([int(last[i]) for i in range(n_tasks)]),
           "majority": majority_random_ties(rng, votes, n_tasks, C),
           "truth": np.asarray(y_true)}
    for name, mf in (("consensus", False), ("consensus_mf", True)):
        lab = consensus(votes, classes=classes, majority_first=mf).labels()
        out[name] = np.array([int(lab[i]) for i in range(n_tasks)])
    return out


# ----------------------------------------------------------------------------- model


def stratified_test(y, frac, rng) -> np.ndarray:
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) >= 3:
            test[idx[: max(1, int(round(len(idx) * frac)))]] = True
    return test


def mean_ci(x) -> tuple[float, float, float]:
    x = np.asarray(x, float)
    m = float(x.mean())
    h = 1.96 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - h, m + h


# ----------------------------------------------------------------------------- one data set


def run_set(name, X, y, classes, args, log) -> dict:
    from trainer.models.head import fit_head

    C = len(classes)
    lower = [c.lower() for c in classes]
    b_name, a_name = (s.strip().lower() for s in args.confusion.split(":"))
    b, a = lower.index(b_name), lower.index(a_name)
    mats = team_matrices(C, b, a)
    effort = args.effort.get(name, 300)
    settings = [tuple(float(v) if "." in v else int(v) for v in s.split("x")) for s in args.settings.split(",")]
    res: dict = {"effort": effort, "classes": classes, "confusion": f"{classes[b]} labeled as {classes[a]}",
                 "settings": {}}
    t0 = time.time()
    for share, k in settings:
        rows = {r: {"label_acc": [], "label_acc_overlap": [], "f1": []} for r in RULES + ["no_overlap"]}
        rel_est = {n: [] for n in TEAM}
        for rep in range(args.reps):
            rng = np.random.default_rng(1000 * rep + int(100 * share) + k)
            test = stratified_test(y, args.test_frac, rng)
            pool = np.flatnonzero(~test)
            eval_classes = np.unique(y[test])
            n_tasks = min(len(pool), int(round(effort / (1 + share * (k - 1)))))
            picked = rng.choice(pool, n_tasks, replace=False)
            overlapped = np.zeros(n_tasks, bool)
            overlapped[: int(round(share * n_tasks))] = True
            votes = simulate_votes(rng, y[picked], overlapped, k, mats)
            labels = rule_labels(rng, votes, n_tasks, C, y[picked])
            cons = consensus(votes, classes=[str(c) for c in range(C)])
            for n in TEAM:
                if n in cons.annotators:
                    rel_est[n].append(cons.annotators[n].accuracy)
            # the same effort without overlap: E distinct images, one annotation each
            n_single = min(len(pool), effort)
            single = rng.choice(pool, n_single, replace=False)
            sv = simulate_votes(rng, y[single], np.zeros(n_single, bool), 1, mats)
            runs = dict(labels)
            runs["no_overlap"] = np.array([int(v.label) for v in sv])
            for rule, lab in runs.items():
                tasks_rows = single if rule == "no_overlap" else picked
                truth = y[tasks_rows]
                rows[rule]["label_acc"].append(float(np.mean(lab == truth)))
                if rule != "no_overlap" and overlapped.any():
                    rows[rule]["label_acc_overlap"].append(float(np.mean(lab[overlapped] == truth[overlapped])))
                head = fit_head(X[tasks_rows], lab, C, seed=rep)
                pred = head.predict_proba(X[test]).argmax(1)
                rows[rule]["f1"].append(macro_f1(y[test], pred, eval_classes))
        summary = {}
        for rule, r in rows.items():
            summary[rule] = {m: mean_ci(v) for m, v in r.items() if v}
        for base in ("last", "majority"):
            for m in ("label_acc", "label_acc_overlap", "f1"):
                summary[f"consensus-{base}"] = summary.get(f"consensus-{base}", {})
                summary[f"consensus-{base}"][m] = mean_ci(np.array(rows["consensus"][m]) - np.array(rows[base][m]))
        summary["consensus-no_overlap"] = {"f1": mean_ci(np.array(rows["consensus"]["f1"]) - np.array(rows["no_overlap"]["f1"]))}
        true_acc = {n: float(np.sum(np.bincount(y, minlength=C) / len(y) * np.diag(mats[n]))) for n in TEAM}
        summary["annotator_accuracy"] = {n: {"true": true_acc[n], "estimated": float(np.mean(v)) if v else None}
                                         for n, v in rel_est.items()}
        summary["n_tasks"] = int(round(effort / (1 + share * (k - 1))))
        res["settings"][f"{share}x{k}"] = summary
        log(f"{name} overlap {share:.0%} x {k}: consensus F1 {summary['consensus']['f1'][0]:.3f} last "
            f"{summary['last']['f1'][0]:.3f} majority {summary['majority']['f1'][0]:.3f}; label acc "
            f"{summary['consensus']['label_acc'][0]:.3f} / {summary['last']['label_acc'][0]:.3f} / "
            f"{summary['majority']['label_acc'][0]:.3f} ({time.time() - t0:.0f} s)")
    return res


# ----------------------------------------------------------------------------- alpha coverage


def alpha_coverage(prevalence, args, log) -> dict:
    C = len(prevalence)
    mats = team_matrices(C, C - 1, C - 2)
    classes = [str(c) for c in range(C)]
    out = {}
    for k in (2, 3):
        rng = np.random.default_rng(7 + k)
        y_big = rng.choice(C, 200_000, p=prevalence)
        truth = kalpha(unit_counts(simulate_votes(rng, y_big, np.ones(len(y_big), bool), k, mats), classes)[1],
                       n_boot=0).alpha
        for U in args.alpha_units:
            hits, widths = 0, []
            for r in range(args.alpha_reps):
                yy = rng.choice(C, U, p=prevalence)
                est = kalpha(unit_counts(simulate_votes(rng, yy, np.ones(U, bool), k, mats), classes)[1],
                             n_boot=args.boot, seed=r)
                hits += bool(est.low <= truth <= est.high)
                widths.append(est.high - est.low)
            out[f"k={k}, U={U}"] = {"truth": truth, "coverage": hits / args.alpha_reps,
                                    "mean_width": float(np.mean(widths)), "reps": args.alpha_reps}
            log(f"alpha coverage k={k} U={U}: truth {truth:.3f}, covered {hits}/{args.alpha_reps}, "
                f"mean width {np.mean(widths):.3f}")
    return out


# ----------------------------------------------------------------------------- report


def fmt(t, pct=False):
    m, lo, hi = t
    if pct:
        return f"{100 * m:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def write_report(results, cov, args, path, cmd):
    L = ["# Consensus benchmark (issue 26)", "", f"Command: `{cmd}`", "",
         f"Team: {', '.join(f'{n} {a:.0%}' for n, a in TEAM.items())} (the confuser labels the confused class as "
         f"the other {CONFUSE_P:.0%} of the time, else {TEAM['confuser']:.0%} right); annotators drawn at random. "
         f"{args.reps} repeats per setting; mean [95% interval of the mean over repeats]. Settings `s x k`: "
         "share s of tasks labeled by k annotators, at the same number of annotations.", ""]
    for name, res in results.items():
        L += [f"## {name}: {res['effort']} annotations, confusion: {res['confusion']}", "",
              "| setting | tasks | rule | labels right | labels right (shared tasks) | macro-F1 |",
              "|---|---|---|---|---|---|"]
        for s, summ in res["settings"].items():
            for rule in RULES + ["no_overlap"]:
                r = summ[rule]
                L.append(f"| {s} | {summ['n_tasks'] if rule != 'no_overlap' else res['effort']} | {rule} | "
                         f"{fmt(r['label_acc'], True)} | "
                         f"{fmt(r['label_acc_overlap'], True) if 'label_acc_overlap' in r else '-'} | {fmt(r['f1'])} |")
        L += ["", "Paired differences (consensus minus ...):", "",
              "| setting | vs | labels right | labels right (shared) | macro-F1 |", "|---|---|---|---|---|"]
        for s, summ in res["settings"].items():
            for base in ("last", "majority"):
                d = summ[f"consensus-{base}"]
                L.append(f"| {s} | {base} | {fmt(d['label_acc'], True)} | {fmt(d['label_acc_overlap'], True)} | "
                         f"{fmt(d['f1'])} |")
            L.append(f"| {s} | no_overlap | - | - | {fmt(summ['consensus-no_overlap']['f1'])} |")
        L += ["", "Annotator accuracy, true vs Dawid-Skene's estimate (mean over repeats):", "",
              "| setting | " + " | ".join(TEAM) + " |", "|---" * (len(TEAM) + 1) + "|"]
        for s, summ in res["settings"].items():
            aa = summ["annotator_accuracy"]
            L.append(f"| {s} | " + " | ".join(f"{aa[n]['true']:.2f} / {aa[n]['estimated']:.2f}" for n in TEAM) + " |")
        L.append("")
    L += ["## Krippendorff's alpha: coverage of the 95% bootstrap interval", "",
          f"Same team, pbc-like prevalence, U shared tasks each labeled by k random members; {args.boot} bootstrap "
          "draws; truth = alpha of the same design on 200,000 tasks.", "",
          "| design | true alpha | coverage | mean width |", "|---|---|---|---|"]
    for d, c in cov.items():
        L.append(f"| {d} | {c['truth']:.3f} | {c['coverage']:.1%} ({c['reps']} repeats) | {c['mean_width']:.3f} |")
    Path(path).write_text("\n".join(L) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder holding the dev sets (ImageFolder layout)")
    ap.add_argument("--sets", default="bccd_wbc,pbc_blood")
    ap.add_argument("--cache", default="/tmp/scopeloop_publishable", help="embedding cache (one folder per set)")
    ap.add_argument("--out", default="/tmp/bench_consensus.md")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--settings", default="0.1x2,0.3x2,0.3x3", help="overlap share x annotators, comma-separated")
    ap.add_argument("--effort", default="bccd_wbc=150,pbc_blood=300", help="annotations per set")
    ap.add_argument("--confusion", default="monocyte:lymphocyte", help="B:A, the confuser labels B as A")
    ap.add_argument("--test-frac", type=float, default=0.3)
    ap.add_argument("--alpha-reps", type=int, default=200)
    ap.add_argument("--alpha-units", default="50,150")
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    args.effort = {k: int(v) for k, v in (p.split("=") for p in args.effort.split(","))}
    args.alpha_units = [int(u) for u in args.alpha_units.split(",")]
    cmd = "python scripts/benchmark_consensus.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def log(msg):
        print(msg, flush=True)

    from benchmark_label_efficiency import embed_dataset

    results, prevalence = {}, None
    for name in [s for s in args.sets.split(",") if s]:
        spaces, y, _keys, classes, _ = embed_dataset(Path(args.data) / name, Path(args.cache) / name,
                                                     "tf_efficientnet_lite0", 224)
        results[name] = run_set(name, spaces["multiscale"], np.asarray(y), list(classes), args, log)
        prevalence = np.bincount(y) / len(y)
    cov = alpha_coverage(prevalence, args, log) if args.alpha_reps else {}
    write_report(results, cov, args, args.out, cmd)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "alpha_coverage": cov}, indent=1, default=float))
    log(f"wrote {args.out}")
    return {"results": results, "alpha_coverage": cov}


if __name__ == "__main__":
    main()
