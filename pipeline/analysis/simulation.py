"""Simulated studies where the truth is known: how often a verdict names a cause that is not there
(its false-cause rate), and how often it names one that is (its power).

A gap study is drawn like the Kaggle one: patients with 1-5 radiographs each, whose outcomes are
correlated (a patient-level latent effect), some patients also in train ("seen"), a model right
with a given sensitivity and specificity, plus whatever the scenario plants: seen images scored
better (memorisation), another class balance in test (prevalence), other rates in test (a
shift). A shortcut study draws radiograph-like images whose only class signal lies inside the
lung box or outside it, and a scorer that reads only that region, and runs the same occlusion
code the pipeline runs on a model. `verdict_check.py` runs every scenario (for
`benchmarks/verdicts.py`); the compare report runs the null of its own design, so each verdict
it prints carries the false-cause rate measured at that study's sizes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

from pipeline.analysis.gap import CAUSES, gap_causes
from pipeline.analysis.resampling import Resampling
from pipeline.analysis.shortcuts import LUNG_BOX, box_mask, occluded_inputs, occlusion_check, shortcut_verdict

# Named causes: a verdict of "supported" or "against" names its cause.
NAMING = ("supported", "against")


@dataclass(frozen=True)
class GapScenario:
    """One kind of study. Shares are of patients; rates of unseen images; lifts in points."""

    n_val: int = 1000
    n_test: int = 624
    prevalence_val: float = 0.70
    prevalence_test: float = 0.70
    seen_val: float = 0.4
    seen_test: float = 0.0
    seen_prevalence_val: float | None = None  # class balance of the seen validation patients (None: the split's)
    sens: float = 0.95
    spec: float = 0.85
    test_sens: float | None = None  # None: as validation's (no shift)
    test_spec: float | None = None
    seen_lift: float = 0.0  # points of accuracy added on seen images (memorisation)
    images_per_patient: tuple[int, int] = (1, 5)
    unit_sizes: tuple[int, ...] = ()  # drawn from these (an actual study's units) instead, where given
    correlation: float = 0.3  # of the latent outcome between one patient's images

    def truth(self) -> dict[str, str]:
        """The verdict each cause should get: supported, against, or absent (any naming is false)."""
        t_sens, t_spec = self.test_sens if self.test_sens is not None else self.sens, self.test_spec if self.test_spec is not None else self.spec
        prevalence = (self.prevalence_val - self.prevalence_test) * ((self.sens + t_sens) - (self.spec + t_spec)) / 2
        residual = (
            (self.sens - t_sens) * (self.prevalence_val + self.prevalence_test)
            + (self.spec - t_spec) * (2 - self.prevalence_val - self.prevalence_test)
        ) / 2
        return {
            "leakage": _direction(self.seen_lift * (self.seen_val > 0)),
            "prevalence": _direction(prevalence),
            "residual": _direction(residual),
            "seen_in_test": _direction(-self.seen_lift * (self.seen_test > 0)),
        }


def _direction(effect: float) -> str:
    return "supported" if effect > 1e-12 else "against" if effect < -1e-12 else "absent"


@dataclass
class GapStudy:
    y_val: np.ndarray
    p_val: np.ndarray
    seen_val: np.ndarray
    units_val: np.ndarray
    y_test: np.ndarray
    p_test: np.ndarray
    seen_test: np.ndarray
    units_test: np.ndarray


def _patients(n: int, sizes: tuple[int, int], rng: np.random.Generator, observed: tuple[int, ...] = ()) -> np.ndarray:
    """A patient number per image: patients of 1..5 images (or of sizes drawn from `observed`) until there are n."""
    counts = rng.choice(np.asarray(observed), n) if observed else rng.integers(sizes[0], sizes[1] + 1, n)
    counts = counts[: int(np.searchsorted(np.cumsum(counts), n)) + 1]
    counts[-1] -= int(counts.sum()) - n
    return np.repeat(np.arange(len(counts)), counts)


def _split(
    n: int,
    prevalence: float,
    seen_share: float,
    seen_prevalence: float | None,
    sens: float,
    spec: float,
    lift: float,
    scenario: GapScenario,
    rng: np.random.Generator,
    first_unit: int,
):
    patient = _patients(n, scenario.images_per_patient, rng, scenario.unit_sizes)
    k = patient.max() + 1
    seen_p = rng.random(k) < seen_share
    if seen_prevalence is None:
        positive_p = rng.random(k) < prevalence
    else:  # the seen patients at their own balance, the unseen at what keeps the split's
        unseen_prevalence = float(np.clip((prevalence - seen_share * seen_prevalence) / max(1 - seen_share, 1e-9), 0, 1))
        positive_p = rng.random(k) < np.where(seen_p, seen_prevalence, unseen_prevalence)
    y, seen = positive_p[patient].astype(int), seen_p[patient]
    rate = np.where(y == 1, sens, spec) + np.where(seen, lift / 100, 0.0)
    latent = np.sqrt(scenario.correlation) * rng.normal(size=k)[patient] + np.sqrt(1 - scenario.correlation) * rng.normal(size=n)
    right = stats.norm.cdf(latent) < np.clip(rate, 0, 1)
    called = np.where(right, y, 1 - y)
    p = np.where(called == 1, 0.5 + 0.5 * rng.random(n), 0.5 * rng.random(n))
    return y, np.clip(p, 0.001, 0.999), seen, patient + first_unit


def draw_gap_study(scenario: GapScenario, rng: np.random.Generator) -> GapStudy:
    s = scenario
    y_v, p_v, seen_v, units_v = _split(s.n_val, s.prevalence_val, s.seen_val, s.seen_prevalence_val, s.sens, s.spec, s.seen_lift, s, rng, 0)
    t_sens = s.test_sens if s.test_sens is not None else s.sens
    t_spec = s.test_spec if s.test_spec is not None else s.spec
    y_t, p_t, seen_t, units_t = _split(s.n_test, s.prevalence_test, s.seen_test, None, t_sens, t_spec, s.seen_lift, s, rng, int(units_v.max()) + 1)
    return GapStudy(y_v, p_v, seen_v, units_v, y_t, p_t, seen_t, units_t)


def gap_verdicts(study: GapStudy, seed: int, resamples: int) -> dict[str, str]:
    g = gap_causes(
        study.y_val,
        study.p_val,
        study.seen_val,
        study.y_test,
        study.p_test,
        0.5,
        seed,
        study.seen_test,
        study.units_val,
        study.units_test,
        resamples=resamples,
    )
    return {cause: g["causes"][cause]["verdict"] for cause in CAUSES}


@dataclass
class Tally:
    """How often each verdict was given to each cause over the simulated studies."""

    n: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, verdicts: dict[str, str]) -> None:
        self.n += 1
        for cause, v in verdicts.items():
            self.counts.setdefault(cause, {}).setdefault(v, 0)
            self.counts[cause][v] += 1

    def rate(self, cause: str, verdicts: tuple[str, ...]) -> float:
        return sum(self.counts.get(cause, {}).get(v, 0) for v in verdicts) / self.n if self.n else float("nan")


def false_cause_rate(tally: Tally, cause: str, truth: str) -> float:
    """Share of studies where the verdict names `cause` though it is absent, or in the wrong direction."""
    wrong = NAMING if truth == "absent" else tuple(v for v in NAMING if v != truth)
    return tally.rate(cause, wrong)


def _stream(seed: int, scenario, k: int) -> np.random.Generator:
    """Study k of a scenario: its own random stream, so scenarios are independent samples."""
    return np.random.default_rng([seed, zlib.crc32(repr(scenario).encode()), k])


def run_gap_scenario(scenario: GapScenario, studies: int, seed: int, resamples: int) -> Tally:
    tally = Tally()
    for k in range(studies):
        rng = _stream(seed, scenario, k)
        tally.add(gap_verdicts(draw_gap_study(scenario, rng), seed + k, resamples))
    return tally


def design_of(y_val, seen_val, y_test, seen_test, units: np.ndarray, sens: float, spec: float) -> GapScenario:
    """The null scenario of an actual study: its sizes, balances and seen shares, its units'
    sizes (`units`: of validation and test together), and a model whose rates do not change
    anywhere (sensitivity = specificity = its balanced accuracy, so no balance moves its accuracy)."""
    rate = float(np.clip((sens + spec) / 2, 0.5, 0.999)) if np.isfinite(sens + spec) else 0.8
    sizes = np.bincount(np.unique(np.asarray(units), return_inverse=True)[1])
    return GapScenario(
        n_val=len(y_val),
        n_test=len(y_test),
        prevalence_val=float(np.mean(y_val)),
        prevalence_test=float(np.mean(y_test)),
        seen_val=float(np.mean(seen_val)),
        seen_test=float(np.mean(seen_test)),
        sens=rate,
        spec=rate,
        unit_sizes=tuple(sizes.tolist()),
    )


def null_false_cause_rates(scenario: GapScenario, studies: int, seed: int, resamples: int) -> dict[str, float]:
    """Per cause, the share of `studies` null studies of this design whose verdict names it."""
    null = replace(scenario, seen_lift=0.0, test_sens=None, test_spec=None, seen_prevalence_val=None, spec=scenario.sens)
    tally = run_gap_scenario(null, studies, seed, resamples)
    return {cause: false_cause_rate(tally, cause, "absent") for cause in CAUSES}


# -- shortcuts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShortcutScenario:
    """Test images whose class signal lies `inside` the lung box, `outside` it (a corner
    marker), or `nowhere`; `separation` in standard deviations of the scorer's noise."""

    region: str
    n_test: int = 624
    size: int = 48
    separation: float = 1.2
    images_per_patient: tuple[int, int] = (1, 5)

    def truth(self) -> str:
        return {"inside": "lung_box", "outside": "without_lung_box", "nowhere": "cannot_tell"}[self.region]


def _corner(size: int) -> tuple[slice, slice]:
    side = max(2, size // 12)
    return slice(1, 1 + side), slice(1, 1 + side)


def draw_shortcut_study(scenario: ShortcutScenario, rng: np.random.Generator):
    """(images, labels, patients, train_grey, scorer): radiograph-like grey images whose class
    shows only in the scenario's region, and a scorer that reads only that region."""
    s = scenario
    patient = _patients(s.n_test, s.images_per_patient, rng)
    y = (rng.random(patient.max() + 1) < 0.5)[patient].astype(int)
    # A patient's images share their brightness in the signal region (correlated), plus noise.
    level = s.separation * y + 0.7 * rng.normal(size=patient.max() + 1)[patient] + 0.7 * rng.normal(size=s.n_test)
    images = rng.normal(110, 12, (s.n_test, s.size, s.size))
    box = box_mask((s.size, s.size), LUNG_BOX)
    rows, cols = _corner(s.size)
    if s.region == "inside":
        images[:, box] += 12 * level[:, None]
    elif s.region == "outside":
        images[:, rows, cols] += 40 * level[:, None, None]
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)

    def scorer(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float64)
        return batch[:, box].mean(axis=1) if s.region != "outside" else batch[:, rows, cols].mean(axis=(1, 2))

    return images, y, patient, 110.0, scorer


def shortcut_study_verdict(scenario: ShortcutScenario, rng: np.random.Generator, seed: int, resamples: int) -> str:
    images, y, patient, grey, scorer = draw_shortcut_study(scenario, rng)
    occluded = {name: scorer(x) for name, x in occluded_inputs(images, grey).items()}
    check = occlusion_check(y, scorer(images), occluded, Resampling.of(patient, y, seed, resamples))
    return shortcut_verdict(check)[0]


def run_shortcut_scenario(scenario: ShortcutScenario, studies: int, seed: int, resamples: int) -> Tally:
    tally = Tally()
    for k in range(studies):
        tally.add({"shortcut": shortcut_study_verdict(scenario, _stream(seed, scenario, k), seed + k, resamples)})
    return tally


# -- paired comparisons -----------------------------------------------------------------------


@dataclass(frozen=True)
class PairScenario:
    """Two models scored on one test set of patients with 1-5 images: `auc_a`, `auc_b` their
    true AUCs; their scores share a patient effect and an image effect (the same hard images
    are hard for both), plus noise of their own."""

    auc_a: float
    auc_b: float
    n_test: int = 624
    prevalence: float = 0.625
    images_per_patient: tuple[int, int] = (1, 5)

    def truth(self) -> str:
        return "distinguishable" if self.auc_a != self.auc_b else "absent"


def pair_study_verdicts(scenario: PairScenario, rng: np.random.Generator, seed: int, resamples: int) -> dict[str, str]:
    from pipeline.analysis.uncertainty import pairwise_tests

    s = scenario
    patient = _patients(s.n_test, s.images_per_patient, rng)
    y = (rng.random(patient.max() + 1) < s.prevalence)[patient].astype(int)
    # Unit variance: patient 0.3 + image 0.4 shared, 0.3 each model's own; AUC = Phi(d / sqrt 2).
    shared = np.sqrt(0.3) * rng.normal(size=patient.max() + 1)[patient] + np.sqrt(0.4) * rng.normal(size=s.n_test)
    scores, thresholds = {}, {}
    for name, auc in (("a", s.auc_a), ("b", s.auc_b)):
        d = np.sqrt(2) * stats.norm.ppf(auc)
        scores[name] = 1 / (1 + np.exp(-(d * (y - 0.5) + shared + np.sqrt(0.3) * rng.normal(size=s.n_test))))
        thresholds[name] = 0.5
    (pair,) = pairwise_tests(y, scores, thresholds, Resampling.of(patient, y, seed, resamples))
    return {f"paired {metric}": "distinguishable" if pair[metric]["distinguishable"] else "not distinguishable" for metric in ("acc", "auc")}


def run_pair_scenario(scenario: PairScenario, studies: int, seed: int, resamples: int) -> Tally:
    tally = Tally()
    for k in range(studies):
        tally.add(pair_study_verdicts(scenario, _stream(seed, scenario, k), seed + k, resamples))
    return tally


@dataclass(frozen=True)
class ShiftScenario:
    """Two sets of `n` images' features (as many as the external step samples), of patients with
    1-3 images that look alike; in the second set `moved` of the `dims` features move by `shift`
    (in units of their spread): another scanner, seen by the model's features."""

    shift: float
    n: int = 500
    dims: int = 64
    moved: int = 4

    def truth(self) -> str:
        return "shift" if self.shift else "absent"


def shift_study_verdict(scenario: ShiftScenario, rng: np.random.Generator, seed: int, resamples: int) -> str:
    """ "shift" where the held-out classifier's AUC interval lies above 0.5, as the external
    step and the compare report say it."""
    from pipeline.analysis.shift import domain_shift

    s = scenario
    features, units = [], []
    for second in (False, True):
        patient = _patients(s.n, (1, 3), rng)
        x = np.sqrt(0.5) * rng.normal(size=(patient.max() + 1, s.dims))[patient] + np.sqrt(0.5) * rng.normal(size=(s.n, s.dims))
        if second:
            x[:, : s.moved] += s.shift
            patient = patient + s.n  # the second set's patients are others
        features.append(x)
        units.append(patient)
    found = domain_shift(features[0], features[1], seed, np.concatenate(units), resamples)
    return "shift" if found.low > 0.5 else "no shift seen"


def run_shift_scenario(scenario: ShiftScenario, studies: int, seed: int, resamples: int) -> Tally:
    tally = Tally()
    for k in range(studies):
        tally.add({"shift": shift_study_verdict(scenario, _stream(seed, scenario, k), seed + k, resamples)})
    return tally
