"""The model card: what a user of one model needs to know, in Markdown."""

from __future__ import annotations

from pipeline.analysis.shortcuts import shortcut_verdict
from pipeline.report.tables import label


def model_card(row: dict, study: dict, data: dict) -> str:
    """What a user of this model needs to know, in Markdown: data, patient handling, training,
    test figures with intervals, threshold, calibration, shortcut check, known limits.
    `data`: name, digest, split sizes, the validation plan and who the images are of (`population`)."""
    name = label(row)

    def ci(k: str) -> str:
        if row.get(f"{k}_ci_low") is None:
            return f"{row[k]:.3f}"
        return f"{row[k]:.3f} [{row[f'{k}_ci_low']:.3f}, {row[f'{k}_ci_high']:.3f}]"

    shortcuts = (study.get("shortcuts") or {}).get(name)
    gap = (study.get("gap") or {}).get(name, {})
    calibration = (
        f"temperature {row['temperature']:.3f} fitted on validation (expected calibration error "
        f"{row['val_ece_before_calibration']:.3f} -> {row['val_ece_after_calibration']:.3f}, the latter cross-fitted on folds of validation)"
        if row.get("temperature")
        else "not calibrated (calibrate=false)"
    )
    if gap:
        calibration += (
            f"; on test: expected calibration error {gap['calibration']['test']['ece']:.3f}, Brier score {gap['calibration']['test']['brier']:.3f}"
        )
    lines = [
        f"# Model card: {row['backbone']}, {row['mode']}",
        "",
        "Classifies a chest radiograph as NORMAL or PNEUMONIA. Research use only: not a medical device.",
        "",
        "## Data",
        f"- data set: {data['name']} (digest `{data['digest']}`), {data['sizes']}",
        f"- validation: {data['validation']}",
        "",
        "## Training",
        f"- backbone {row['backbone']} ({row['mode']}), weights {row.get('weights_key')}, lr {row['lr']:.3g} ({row.get('lr_source')}), "
        f"{row['epochs_run']} epochs run of {row.get('epochs')}, kept at the lowest validation loss",
        f"- runs: train `{row['train_run_id']}`, evaluate `{row['evaluate_run_id']}`",
        "",
        f"## Test figures at the operating threshold {row['operating_threshold']:.4g} (95 % intervals)"
        if row.get("operating_threshold") is not None
        else "## Test figures at 0.5 (no threshold stored; 95 % intervals)",
        f"- accuracy {ci('test_acc_at_val_threshold')}, sensitivity {ci('test_sensitivity_at_val_threshold')}, "
        f"specificity {ci('test_specificity_at_val_threshold')}; AUC {ci('test_auc')} (any threshold)",
        f"- at 0.5, for comparison only (not how the model is used): accuracy {ci('test_acc')}, sensitivity {ci('test_sensitivity')}, "
        f"specificity {ci('test_specificity')}",
        f"- intervals: {row.get('interval_method') or 'exact / bootstrap of images'}",
        f"- validation at the threshold: accuracy {row['val_acc_at_val_threshold']:.3f}"
        + (f", AUC {row['val_auc']:.3f}" if row.get("val_auc") is not None else ""),
        "",
        "## Operating point and calibration",
        f"- threshold {row['operating_threshold']:.4g}: {row.get('operating_threshold_rule')}; predict and mlflow models serve use it unless told otherwise"
        if row.get("operating_threshold") is not None
        else "- threshold 0.5 (none stored)",
        f"- {calibration}",
        "",
        "## Shortcut check",
        shortcut_card_line(shortcuts) if shortcuts else "- not run",
        "",
        "## External validation",
        *external_card_lines(name, study.get("external") or {}, data["name"]),
        "",
        "## Known limits",
        f"- {data['population']}",
        "- Test figures hold for images like the test set's; its class balance and any patients it shares with train are in the report.",
        *[f"- {f}" for f in study.get("findings", []) if f.startswith(name)],
        "",
    ]
    return "\n".join(lines)


def external_card_lines(name: str, sets: dict[str, dict], internal: str) -> list[str]:
    """Each external set the model was scored on: its figures, the drop, the shift and the
    images that were not external; or that it was not validated outside its own data set."""

    def iv(m: dict, k: str) -> str:
        return f"{m[k]:.3f} [{m[f'{k}_ci_low']:.3f}, {m[f'{k}_ci_high']:.3f}]"

    lines = []
    for s in sets.values():
        m = s["models"].get(name)
        if m is None:
            continue
        shift = f"; shift AUC {iv(m, 'shift_auc')}" if m.get("shift_auc") is not None else ""
        lines.append(
            f"- {s['source']} ({s['n_images']} images): AUC {iv(m, 'external_auc')}, accuracy {iv(m, 'external_acc')}, sensitivity "
            f"{iv(m, 'external_sensitivity')}, specificity {iv(m, 'external_specificity')}; AUC drop from the internal test "
            f"{iv(m, 'external_drop_auc')}, accuracy drop {iv(m, 'external_drop_acc')} (class balance {iv(m, 'external_drop_acc_class_balance')})"
            f"{shift}; {int(m['external_n_shared_with_train'])} of its images are copies of this model's training or validation images or of their patients"
        )
    return lines or [
        f"- not validated outside {internal}: its figures hold for images like {internal}'s test set, and nothing here says how it does elsewhere"
    ]


def with_external_line(card: str, line: str, source: str) -> str:
    """`card` with `line` (one of `external_card_lines`) in its External validation section: it
    replaces an earlier line of the same `source` and the "not validated" line; a card without
    the section gains it before Known limits (or at the end)."""
    heading = "## External validation"
    lines = card.splitlines()
    if heading not in lines:
        at = lines.index("## Known limits") if "## Known limits" in lines else len(lines)
        lines[at:at] = [heading, ""]
    start = lines.index(heading) + 1
    end = next((k for k in range(start, len(lines)) if lines[k].startswith("## ")), len(lines))
    kept = [x for x in lines[start:end] if x.strip() and not x.startswith(("- not validated outside", f"- {source} ("))]
    return "\n".join([*lines[:start], *kept, line, "", *lines[end:]]) + "\n"


def shortcut_card_line(check: dict) -> str:
    """The occlusion figures under both fills, and the verdict they support."""

    def iv(key: str) -> str:
        c = check.get(key)
        return f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]" if c else "-"

    kind, why = shortcut_verdict(check)
    return (
        f"- test AUC with the lungs hidden {iv('lungs_hidden')} (training mean grey) / {iv('lungs_hidden_fill_visible')} (visible part's mean), "
        f"with only the lungs shown {iv('outside_hidden')} / {iv('outside_hidden_fill_visible')}\n"
        f"- verdict: {kind.replace('_', ' ')} ({why})"
    )


def population(name: str, kaggle_names: bool) -> str:
    """What the card can say of whom the images show."""
    if name == "demo":
        return "Trained on the synthetic demo set: drawn images, not radiographs of patients; a demonstration only."
    if kaggle_names:
        return (
            "Trained and tested on one data set with the Kaggle / Kermany file names: paediatric radiographs (1 to 5 years) from one "
            "centre (Guangzhou Women and Children's Medical Center); adults, other hospitals, machines and protocols may behave differently."
        )
    return f"Trained and tested on one data set ({name}); other hospitals, machines and populations may behave differently."
