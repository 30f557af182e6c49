"""The answer, per model: each cause's size, interval, verdict and false-cause rate, as rows and as
the Markdown table the report leads with."""

from __future__ import annotations

from pipeline.analysis.shortcuts import shortcut_verdict

CAUSE_WORDS = {
    "leakage": "validation images of patients (or pictures) train also holds, scored better than unseen images of the same class",
    "prevalence": "the different class balance of validation and test at the model's threshold",
    "residual": (
        "what balance and leakage leave unexplained: distribution shift, label noise and chance, and the optimism of choosing "
        "the epoch, the learning rate and the threshold on this same validation set"
    ),
    "seen_in_test": "test images of patients (or pictures) train holds, which lift test accuracy",
}
CAUSE_NAMES = {"leakage": "leakage", "prevalence": "prevalence", "residual": "residual", "seen_in_test": "seen in test"}


def verdict_rows(analysis: dict) -> list[dict]:
    """The answer, per model: each cause's size, interval, verdict and that verdict's false-cause
    rate measured on null studies of this design; and the shortcut check's verdict."""
    rates = (analysis.get("false_cause_rates") or {}).get("rates", {})
    rows = []
    for name, g in (analysis.get("gap") or {}).items():
        for cause in CAUSE_WORDS:
            c = g["causes"][cause]
            rows.append(
                {
                    "model": name,
                    "cause": CAUSE_NAMES[cause],
                    "value": c["value"],
                    "ci_low": c["ci_low"],
                    "ci_high": c["ci_high"],
                    "verdict": c["verdict"],
                    "false_cause_rate": rates.get(name, {}).get(cause),
                }
            )
    for name, check in (analysis.get("shortcuts") or {}).items():
        kind, _ = shortcut_verdict(check)
        hidden = check.get("lungs_hidden", {})
        rows.append(
            {
                "model": name,
                "cause": "shortcut (AUC with the lung box hidden)",
                "value": hidden.get("value"),
                "ci_low": hidden.get("ci_low"),
                "ci_high": hidden.get("ci_high"),
                "verdict": kind.replace("_", " "),
                "false_cause_rate": None,
            }
        )
    return rows


def verdicts_markdown(analysis: dict) -> str:
    rows = verdict_rows(analysis)
    if not rows:
        return ""
    studies = (analysis.get("false_cause_rates") or {}).get("studies")
    lines = [
        "| model | cause | size (accuracy points; AUC for the shortcut) [95 % CI] | verdict | false-cause rate |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        size = (
            ""
            if r["value"] is None
            else (
                f"{r['value']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
                if "shortcut" not in r["cause"]
                else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            )
        )
        rate = f"{r['false_cause_rate']:.2f}" if r["false_cause_rate"] is not None else "see benchmarks/RESULTS.md (verdict check)"
        lines.append(f"| {r['model']} | {r['cause']} | {size} | {r['verdict']} | {rate} |")
    note = (
        f"False-cause rate: how often this verdict names a cause (supported or against) in {studies} simulated studies of this design "
        "(these sizes, class balances, seen shares and patients) where no cause is present; measured in this run. "
        if studies
        else ""
    )
    return "\n".join(lines) + "\n\n" + note + ("The shortcut verdict's rates are measured on generated images by `python benchmarks/verdicts.py`.\n")
