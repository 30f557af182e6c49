"""The verdict check: each verdict the report states, tried on simulated studies where the truth is known.

    python benchmarks/verdicts.py                    # 400 studies per scenario, about 15 minutes on 2 cores
    python benchmarks/verdicts.py --studies 40 --resamples 500 --results /tmp/v.md   # a quick look

Scenarios (Kaggle sizes: about 1,000 validation and 624 test images; patients of 1-5 images with
correlated outcomes; `pipeline/analysis/simulation.py` draws them): (a) no shift; (b) seen and
unseen validation images differ only in class mix; (c) memorisation; (d) a prevalence shift only;
(e) class signal only inside the lung box; (f) only outside it, a corner marker. (e) and (f) run
the pipeline's occlusion code on generated images with a scorer that reads only its region; (i)
two models alike and (j) one better, tested paired as the report tests every pair; (k) two sets
of image features alike and (l) one moved (another scanner), the shift as `external` and the
compare report flag it (`shift.domain_shift`: fitted on half, its AUC interval above 0.5).
Outcomes of one patient's images are correlated at 0.3 (of a latent normal); (g) and (h) repeat
(a) and (c) at 0.6, printed to show how the rates move with it, not judged.

Prints, per scenario and cause, how often each verdict was given, the false-cause rate (a cause
named that is absent, or named the wrong way round) and, for the cause the scenario plants, the
power; writes the table into RESULTS.md; and ends with one line:
`verdicts: largest false-cause rate R in <scenario> (limit L); smallest power P in <scenario> (limit 0.80)`.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from datetime import date
from pathlib import Path

from pipeline.analysis.verdict_check import POWER_LIMIT, monte_carlo_limit, verdict_check

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
log = logging.getLogger("verdicts")


def table(rows) -> str:
    lines = ["| scenario | cause | truth | verdicts given (share of studies) | false-cause rate | power |", "|---|---|---|---|---|---|"]
    for r in rows:
        given = ", ".join(f"{v} {share:.3f}" for v, share in r.rates.items())
        power = f"{r.power:.3f}" if r.power is not None else ""
        lines.append(f"| {r.scenario}{'' if r.judged else ' (not judged)'} | {r.cause} | {r.truth} | {given} | {r.false_cause_rate:.3f} | {power} |")
    return "\n".join(lines)


def false_cause_rows(rows) -> list:
    """The judged rates whose cause is absent: each may truly be up to 0.05 (where a cause is
    present, naming it the wrong way round is judged too, but its rate is near 0)."""
    return [r for r in rows if r.judged and r.truth in ("absent", "cannot_tell")]


def summary(rows, studies: int) -> str:
    limit = monte_carlo_limit(studies, len(false_cause_rows(rows)))
    rows = [r for r in rows if r.judged]
    worst = max(rows, key=lambda r: r.false_cause_rate)
    planted = [r for r in rows if r.power is not None]
    weakest = min(planted, key=lambda r: r.power)
    return (
        f"verdicts: largest false-cause rate {worst.false_cause_rate:.3f} in {worst.scenario} ({worst.cause}) (limit {limit:.3f}); "
        f"smallest power {weakest.power:.3f} in {weakest.scenario} ({weakest.cause}) (limit {POWER_LIMIT:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=400, help="simulated studies per scenario")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval (the pipeline's own: 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="Markdown file the section is appended to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    rows = verdict_check(args.studies, args.resamples, args.seed)
    elapsed = time.perf_counter() - start
    judged = len(false_cause_rows(rows))
    limit = monte_carlo_limit(args.studies, judged)
    line = summary(rows, args.studies)
    section = "\n".join(
        [
            f"## {date.today().isoformat()}, verdict check",
            "",
            f"- machine: {platform.processor() or platform.machine()}, command: `python benchmarks/verdicts.py --studies {args.studies} "
            f"--resamples {args.resamples} --seed {args.seed}` ({elapsed:.0f} s)",
            f"- {args.studies} simulated studies per scenario, each verdict made as the report makes it (patient bootstrap, "
            f"{args.resamples} resamples); a verdict names a cause when it says supported or against (gap) or lung_box / "
            "without_lung_box (shortcut check)",
            f"- limit on the largest false-cause rate: 0.05 plus the Monte Carlo margin z x sqrt(0.05 x 0.95 / {args.studies}) = {limit:.3f}, "
            f"z the one-sided normal quantile at 1 - 0.05 / {judged} (Bonferroni over the {judged} rates judged): the bound the largest of "
            f"{judged} rates of {args.studies} studies stays under with 95 % probability when each is truly 0.05",
            "",
            table(rows),
            "",
            line,
            "",
        ]
    )
    print(table(rows))
    print(line)
    with open(args.results, "a") as f:
        f.write("\n" + section)
    log.info("appended to %s", args.results)


if __name__ == "__main__":
    main()
