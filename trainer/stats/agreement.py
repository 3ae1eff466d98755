"""How well annotators agree: Krippendorff's alpha with a bootstrap 95% interval and its n.

Which statistic, and why **Krippendorff's alpha (nominal)**: in a lab's project each task is
labeled by a varying subset of the team (two people here, three there, most tasks by one), and
every annotator sees only part of the tasks. Cohen's kappa is defined for exactly two fixed
coders; Fleiss' kappa for a constant number of raters per task; alpha takes any number of
annotators per task, missing data and unequal annotator sets, and corrects for small samples
(expected disagreement from the pooled values, n - 1). Zapf et al. (2016), comparing
coefficients and intervals for nominal ratings by simulation, recommend alpha with a bootstrap
interval. Alpha = 1 - D_o / D_e: 1 is perfect agreement, 0 what chance gives, < 0 worse.

    Krippendorff K (2011). Computing Krippendorff's alpha-reliability. Annenberg School for
        Communication, University of Pennsylvania, departmental paper 43.
    Krippendorff K (2004). Content Analysis: An Introduction to Its Methodology, 2nd ed., ch. 11.
    Hayes AF, Krippendorff K (2007). Answering the call for a standard reliability measure for
        coding data. Communication Methods and Measures 1(1):77-89.
    Zapf A, Castell S, Morawietz L, Karch A (2016). Measuring inter-rater reliability for nominal
        data - which coefficients and confidence intervals are appropriate? BMC Medical Research
        Methodology 16:93.

Computation (Krippendorff 2011): per task u with m_u >= 2 values, n_uc of them class c, the
coincidence matrix o_ck = sum_u (n_uc n_uk - [c = k] n_uc) / (m_u - 1) (symmetric; its cells say
which classes annotators confuse with each other: the between-annotator confusion matrix);
n_c = sum_k o_ck, n = sum_c n_c, and for nominal data

    alpha = 1 - (n - 1) * sum_{c != k} o_ck / (n^2 - sum_c n_c^2).

Intervals: percentile bootstrap over tasks (the sampling units; Hayes & Krippendorff 2007
bootstrap alpha, Zapf et al. 2016 bootstrap over subjects): tasks are drawn with replacement,
alpha recomputed, the 2.5% and 97.5% quantiles taken. n is the number of tasks with two or more
annotations (and the pairable values behind them).

Per class: alpha of the data recoded as c / not c (one-vs-rest), same interval. Per annotator:
agreement with the consensus **of the others** (trainer.stats.consensus.leave_one_out: the
posterior with the annotator's own vote divided out, or the reviewer's label), as a raw share and
as alpha between the two, each with its interval and n. Reviewers are left out of the statistic
(they are asked on disputed tasks, which would bias it); pass `tasks=` to restrict it to the
tasks picked at random for overlap, the unbiased estimate.
"""
from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np

from trainer.stats.consensus import Consensus, _latest, consensus, leave_one_out

CONFIDENCE = 0.95
N_BOOT = 2000


@dataclass
class AlphaEstimate:
    alpha: float                     # nan where undefined (no pairable values, or a single value class)
    low: float
    high: float
    n_tasks: int                     # tasks with >= 2 values
    n_values: int                    # pairable values (annotations on those tasks)
    observed_agreement: float = float("nan")   # share of agreeing pairs (not chance-corrected)

    def to_dict(self) -> dict:
        r = (lambda x: None if not np.isfinite(x) else round(float(x), 4))
        return {"alpha": r(self.alpha), "interval": [r(self.low), r(self.high)], "n_tasks": self.n_tasks,
                "n_values": self.n_values, "observed_agreement": r(self.observed_agreement)}

    def text(self) -> str:
        if not np.isfinite(self.alpha):
            return f"alpha n/a (n={self.n_tasks} tasks)"
        return f"alpha {self.alpha:.2f} [{self.low:.2f}, {self.high:.2f}] (n={self.n_tasks} tasks)"


@dataclass
class AnnotatorAgreement:
    annotator: Hashable
    agreement: float                 # share of their labels equal to the others' consensus
    interval: tuple[float, float]
    alpha: AlphaEstimate             # alpha between them and the others' consensus
    n: int                           # their tasks shared with someone (or reviewed)

    def to_dict(self) -> dict:
        return {"annotator": self.annotator, "agreement": round(float(self.agreement), 4) if self.n else None,
                "interval": [round(float(x), 4) for x in self.interval], "n": self.n, "alpha": self.alpha.to_dict()}


@dataclass
class Agreement:
    classes: list[str]
    project: AlphaEstimate
    per_class: dict[str, AlphaEstimate]
    per_annotator: dict[Hashable, AnnotatorAgreement]
    coincidence: np.ndarray          # (C, C) between-annotator confusion (Krippendorff's coincidences)
    params: dict = field(default_factory=dict)

    def status_line(self) -> str:
        """One line for `scopeloop status`."""
        p = self.project
        if not np.isfinite(p.alpha):
            return f"annotator agreement: not measured yet ({p.n_tasks} tasks with 2+ annotators)"
        low = min(self.per_annotator.values(), key=lambda a: a.agreement if a.n else 2.0, default=None)
        tail = f"; lowest: {low.annotator} {low.agreement:.0%} with the others (n={low.n})" if low and low.n else ""
        return (f"annotator agreement: Krippendorff's alpha {p.alpha:.2f} [{p.low:.2f}, {p.high:.2f}] "
                f"on {p.n_tasks} tasks{tail}")

    def confused_pairs(self, top: int = 5) -> list[tuple[str, str, float]]:
        """The class pairs annotators confuse most: (a, b, coincidences), largest first."""
        C = len(self.classes)
        pairs = [(self.classes[i], self.classes[j], float(self.coincidence[i, j]))
                 for i in range(C) for j in range(i + 1, C) if self.coincidence[i, j] > 0]
        return sorted(pairs, key=lambda p: -p[2])[:top]

    def to_dict(self) -> dict:
        return {"statistic": "Krippendorff's alpha (nominal), 95% percentile bootstrap over tasks",
                "classes": list(self.classes), "project": self.project.to_dict(),
                "per_class": {c: e.to_dict() for c, e in self.per_class.items()},
                "per_annotator": [a.to_dict() for a in self.per_annotator.values()],
                "coincidence": np.round(self.coincidence, 3).tolist(), "params": dict(self.params)}


# ----------------------------------------------------------------------------- alpha


def unit_counts(votes: Iterable, classes: list[str], exclude: Collection = (), tasks: Collection | None = None
                ) -> tuple[list, np.ndarray]:
    """(tasks, (U, C) counts of each class among each task's votes): the reliability data in the
    "values by units" form alpha works on; one vote per annotator and task (the latest)."""
    cidx = {c: i for i, c in enumerate(classes)}
    keep = None if tasks is None else set(tasks)
    rows: dict = {}
    for v in _latest(votes):
        if v.annotator in exclude or v.label not in cidx or (keep is not None and v.task not in keep):
            continue
        rows.setdefault(v.task, np.zeros(len(classes)))[cidx[v.label]] += 1
    order = list(rows)
    return order, (np.stack([rows[t] for t in order]) if order else np.zeros((0, len(classes))))


def coincidences(counts: np.ndarray) -> np.ndarray:
    """Krippendorff's coincidence matrix (C, C) from (U, C) unit counts (units with < 2 values drop)."""
    counts = np.asarray(counts, float)
    m = counts.sum(1)
    ok = m >= 2
    n, mm = counts[ok], m[ok]
    o = np.einsum("uc,uk->ck", n / (mm - 1)[:, None], n)
    o -= np.diag((n / (mm - 1)[:, None]).sum(0))
    return o


def _alpha_from(d_units: np.ndarray, n_c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Vectorised nominal alpha from weighted sums: d_units = sum_u w_u d_u (observed
    disagreeing coincidences), n_c (.., C) pairable values per class, n their total."""
    de = n ** 2 - (n_c ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(de > 0, 1.0 - (n - 1) * d_units / de, np.nan)


def alpha(counts: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, confidence: float = CONFIDENCE) -> AlphaEstimate:
    """Krippendorff's alpha (nominal) of (U, C) unit counts with a percentile-bootstrap interval
    over units (module docstring). Undefined (nan) without pairable values or when all pairable
    values are one class (no expected disagreement)."""
    counts = np.asarray(counts, float)
    m = counts.sum(1) if counts.size else np.zeros(0)
    ok = m >= 2
    nu, mu = counts[ok], m[ok]
    U = len(nu)
    if U == 0:
        return AlphaEstimate(float("nan"), float("nan"), float("nan"), 0, 0)
    d_u = (mu ** 2 - (nu ** 2).sum(1)) / (mu - 1)       # disagreeing coincidences of each unit
    point = float(_alpha_from(d_u.sum(), nu.sum(0), mu.sum()))
    observed = 1.0 - float(d_u.sum() / mu.sum())
    lo = hi = float("nan")
    if n_boot and np.isfinite(point):
        rng = np.random.default_rng(seed)
        W = rng.multinomial(U, np.full(U, 1.0 / U), size=n_boot).astype(float)  # (B, U) bootstrap weights
        draws = _alpha_from(W @ d_u, W @ nu, W @ mu)
        draws = draws[np.isfinite(draws)]
        if len(draws):
            q = (1 - confidence) / 2
            lo, hi = (float(x) for x in np.quantile(draws, [q, 1 - q]))
    return AlphaEstimate(point, lo, hi, int(U), int(mu.sum()), observed)


def _share_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for k of n (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.special import ndtri

    z = float(ndtri(1 - (1 - confidence) / 2))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


# ----------------------------------------------------------------------------- the report


def agreement(votes: Iterable, classes: list[str] | None = None, reviewers: Collection = (), *,
              cons: Consensus | None = None, tasks: Collection | None = None, n_boot: int = N_BOOT,
              seed: int = 0, confidence: float = CONFIDENCE) -> Agreement:
    """Agreement per project, per class and per annotator (module docstring).

    votes: `Vote`s or (task, annotator, label[, time]) tuples. reviewers: left out of alpha,
    but their label is the reference for the annotators' agreement on the tasks they settled.
    cons: a `consensus(...)` of the same votes (computed here when not given). tasks: restrict the
    statistic to these tasks (the random overlap share).
    """
    votes = _latest(votes)
    if cons is None:
        cons = consensus(votes, classes=classes, reviewers=reviewers)
    classes = list(cons.classes if classes is None else classes)
    reviewers = set(reviewers)
    _, counts = unit_counts(votes, classes, exclude=reviewers, tasks=tasks)
    project = alpha(counts, n_boot, seed, confidence)
    per_class = {}
    for i, c in enumerate(classes):
        binary = np.stack([counts[:, i], counts.sum(1) - counts[:, i]], 1) if len(counts) else np.zeros((0, 2))
        per_class[c] = alpha(binary, n_boot, seed + 1 + i, confidence)

    # each annotator against the consensus of the others, on tasks shared with someone or reviewed
    keep = None if tasks is None else set(tasks)
    cidx = {c: i for i, c in enumerate(classes)}
    pairs: dict = {}
    for t, tc in cons.tasks.items():
        if keep is not None and t not in keep:
            continue
        workers = [a for a in tc.votes if a not in reviewers]
        for a in workers:
            if len(workers) < 2 and tc.reviewed_by is None:
                continue
            if tc.votes[a] not in cidx:
                continue
            ref = int(np.argmax(leave_one_out(cons, t, a)))
            pairs.setdefault(a, []).append((cidx[tc.votes[a]], ref))
    per_annotator = {}
    for a in [a for a in cons.annotators if a not in reviewers]:
        p = np.array(pairs.get(a, []), np.int64).reshape(-1, 2)
        n = len(p)
        k = int((p[:, 0] == p[:, 1]).sum()) if n else 0
        two = np.zeros((n, len(classes)))
        if n:
            np.add.at(two, (np.arange(n), p[:, 0]), 1)
            np.add.at(two, (np.arange(n), p[:, 1]), 1)
        per_annotator[a] = AnnotatorAgreement(a, k / n if n else float("nan"), _share_interval(k, n, confidence),
                                              alpha(two, n_boot, seed + 1000 + len(per_annotator), confidence), n)
    return Agreement(classes, project, per_class, per_annotator, coincidences(counts),
                     {"n_boot": n_boot, "confidence": confidence, "reviewers_excluded": sorted(map(str, reviewers)),
                      "restricted_to_tasks": tasks is not None})
