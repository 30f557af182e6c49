"""Plain words: the findings built from the numbers, and the analysis as Markdown."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from pipeline.analysis.shortcuts import LUNG_BOX, shortcut_finding, shortcut_verdict
from pipeline.analysis.verdicts import CAUSE_WORDS, verdicts_markdown
from pipeline.data.checks import SPLIT_ORDER


def _interval(c: dict, unit: str = " points") -> str:
    return f"{c['value']:+.1f}{unit} [{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"


def _untested(test: dict) -> str:
    return f"cannot be tested ({test['untestable']})" if test.get("untestable") else ""


def comparison_findings(analysis: dict) -> list[str]:
    """Which differences between models this test set can tell apart, with the p-values."""
    out = []
    pairs = analysis.get("pairwise") or []
    for metric in ("acc", "auc"):
        if not pairs:
            break
        told = [p for p in pairs if p[metric]["distinguishable"]]
        name = "Accuracy at each model's threshold" if metric == "acc" else "AUC"
        parts = []
        for p in pairs:
            a, b = (p["acc_a"], p["acc_b"]) if metric == "acc" else (p["auc"]["auc_a"], p["auc"]["auc_b"])
            verdict = _untested(p[metric]) or (
                f"p = {p[metric]['p_value']:.3g} (Holm {p[metric]['p_holm']:.3g}), "
                + ("distinguishable" if p[metric]["distinguishable"] else "not distinguishable")
            )
            parts.append(f"{p['a']} {a:.3f} vs {p['b']} {b:.3f}: {verdict}")
        method = pairs[0][metric].get("method", "")
        out.append(
            f"{name} ({method}, paired on the same test images): {len(told)} of {len(pairs)} pairs differ beyond chance "
            f"at 5 % after Holm's correction; " + "; ".join(parts) + "."
        )
    for name, spread in (analysis.get("seeds") or {}).items():
        out.append(
            f"Over {spread['n']} training seeds {name} scores test accuracy {spread['test_acc_at_val_threshold_mean']:.3f} +- {spread['test_acc_at_val_threshold_sd']:.3f} "
            f"(mean +- sd) and AUC {spread['test_auc_mean']:.3f} +- {spread['test_auc_sd']:.3f}."
        )
    return out


def gap_findings(analysis: dict) -> list[str]:
    """Each model's validation - test gap split into causes; which are supported, which ruled out."""
    out = []
    verdicts: dict[str, dict[str, list[str]]] = {c: {} for c in CAUSE_WORDS}
    for name, g in (analysis.get("gap") or {}).items():
        c = g["causes"]
        t = g["threshold"]
        optimism = c["threshold_optimism"]["value"]
        out.append(
            f"{name}: at its threshold {t['operating_threshold']:.3g}, validation - test gap {_interval(c['gap'])} = leakage {_interval(c['leakage'])} "
            f"+ prevalence {_interval(c['prevalence'])} + residual {_interval(c['residual'])} + seen in test {_interval(c['seen_in_test'])} "
            f"(95 % intervals, {g['interval_method']}). The residual also holds the optimism of choices made on validation: choosing the "
            + (
                f"threshold there adds {optimism:+.1f} points to validation accuracy (against a threshold chosen on other folds); "
                if np.isfinite(optimism)
                else "threshold's share could not be measured (too few patients to fold); "
            )
            + "the epoch's and the learning rate's shares are not measured. "
            f"A threshold chosen on test would add {c['threshold_oracle']['value']:.1f} points (an oracle, to explain only)."
        )
        orders = (c["prevalence_at_val_rates"], c["prevalence_at_test_rates"])
        if (orders[0]["ci_low"] > 0 and orders[1]["ci_high"] < 0) or (orders[0]["ci_high"] < 0 and orders[1]["ci_low"] > 0):
            out.append(
                f"{name}: the class balance's effect depends on whose rates are held fixed ({c['prevalence_at_val_rates']['value']:+.1f} points "
                f"at validation's, {c['prevalence_at_test_rates']['value']:+.1f} at test's): undecided."
            )
        for cause in CAUSE_WORDS:
            verdicts[cause].setdefault(c[cause]["verdict"], []).append(name)
        seen, unseen = g["patients"]["test_acc_seen_patients"], g["patients"]["test_acc_unseen_patients"]
        if seen["n"]:
            out.append(
                f"{name}: {seen['n']} test images belong to patients (or are pictures or near-copies) train also holds; accuracy on them "
                f"{seen['value']:.3f} [{seen['low']:.3f}, {seen['high']:.3f}], on the {unseen['n']} others {unseen['value']:.3f} "
                f"[{unseen['low']:.3f}, {unseen['high']:.3f}]: the unseen figure is the one that measures diagnosis."
            )
        for split, words in (("val", "validation"), ("test", "test")):
            over = c[f"overconfidence_{split}"]
            calibrated = g["calibration"][split]
            if over["overconfident"]:
                out.append(
                    f"{name} is overconfident on {words}: mean confidence {calibrated['mean_confidence']:.3f} against accuracy {calibrated['accuracy']:.3f} "
                    f"({_interval(over)}; expected calibration error {calibrated['ece']:.3f}, Brier score {calibrated['brier']:.3f}): its probabilities "
                    "overstate its certainty, so its loss is high even where its accuracy is not."
                )
    for cause, words in CAUSE_WORDS.items():
        by_verdict = verdicts[cause]
        if by_verdict.get("supported"):
            out.append(f"Supported as a cause of the gap: {words}, for {', '.join(by_verdict['supported'])} (interval above 0).")
        if by_verdict.get("ruled out"):
            out.append(
                f"Ruled out as a cause of more than 2 points: {words}, for {', '.join(by_verdict['ruled out'])} (whole interval within +-2 points)."
            )
        if by_verdict.get("against"):
            out.append(f"Working against the gap (raising test accuracy): {words}, for {', '.join(by_verdict['against'])}.")
        if by_verdict.get("undecided"):
            out.append(f"Not decided by this data (interval spans 0 and more than 2 points): {words}, for {', '.join(by_verdict['undecided'])}.")
        if by_verdict.get("cannot tell"):
            out.append(f"Not measurable here (a class has no unseen image): {words}, for {', '.join(by_verdict['cannot tell'])}.")
    return out


def findings(analysis: dict) -> list[str]:
    """Sentences built from the numbers, most telling first."""
    out = []
    for name, reason in (analysis.get("skipped_configurations") or {}).items():
        out.append(f"{name} was skipped: {reason}.")
    out += comparison_findings(analysis)
    out += [shortcut_finding(name, s, s.get("saliency_in_lung_box")) for name, s in (analysis.get("shortcuts") or {}).items()]
    out += gap_findings(analysis)
    errors = analysis.get("errors", {})
    if errors:
        gaps = {name: e["val_minus_test_points"] for name, e in errors.items()}
        mean_gap = float(np.mean(list(gaps.values())))
        low, high = min(gaps, key=gaps.get), max(gaps, key=gaps.get)
        direction = "above" if mean_gap >= 0 else "below"
        out.append(
            f"Validation accuracy is {abs(mean_gap):.1f} points {direction} test accuracy on average over {len(gaps)} models "
            f"(validation - test: {gaps[low]:+.1f} points for {low} to {gaps[high]:+.1f} for {high})."
        )
        fp, fn = sum(e["false_positives"] for e in errors.values()), sum(e["false_negatives"] for e in errors.values())
        if fp + fn:
            kind = "false positives (NORMAL called PNEUMONIA)" if fp > fn else "false negatives (PNEUMONIA missed)"
            out.append(f"Most test errors are {kind}: {fp} false positives against {fn} false negatives, summed over the models.")
    leak = analysis["leakage"]
    patients = leak["patients"]
    if patients.get("checked"):
        for pair, overlap in patients["overlap"].items():
            a, b = pair.split("-")
            if overlap["n_patients"]:
                out.append(
                    f"{overlap['n_patients']} {b} patients also have images in {a} ({overlap['n_images'][b]} {b} images): those images test memory of a patient, not diagnosis."
                )
        naive = leak.get("naive_key_shared_patients", {})
        right = {pair: o["n_patients"] for pair, o in patients["overlap"].items()}
        for pair, count in naive.items():
            if count > right.get(pair, 0):
                a, b = pair.split("-")
                out.append(
                    f"Keyed by the number alone, {count} patients would seem shared by {a} and {b}; keyed as the Kaggle names require "
                    f"(number and infection type: person1_bacteria and person1_virus are two children) there are {right.get(pair, 0)}."
                )
    if leak["n_exact_groups_across_splits"] or leak["n_near_duplicate_pairs"]:
        out.append(
            f"{leak['n_exact_groups_across_splits']} groups of identical images and {leak['n_near_duplicate_pairs_not_exact']} further near-identical pairs "
            f"(perceptual hashes within {leak['near_duplicate_max_bits']} of 255 bits) cross split boundaries."
        )
    balance = analysis["shift"]["class_balance"]
    if "train" in balance and "test" in balance:
        out.append(f"PNEUMONIA is {100 * balance['train']:.0f} % of train and {100 * balance['test']:.0f} % of test.")
    auc = analysis["shift"].get("domain_auc")
    if auc is not None:
        low, high = analysis["shift"].get("domain_auc_ci_low", auc), analysis["shift"].get("domain_auc_ci_high", auc)
        verdict = (
            "hard to tell apart: no sign of distribution shift (the interval holds 0.5)"
            if low <= 0.5
            else "clearly distinguishable: the test set comes from a shifted distribution"
            if auc >= 0.7
            else "somewhat distinguishable: a mild shift"
        )
        out.append(
            f"A classifier on {analysis['shift']['domain_features']} features tells train from test images with AUC {auc:.2f} [{low:.2f}, {high:.2f}] "
            f"(0.5 = no difference; fitted on half the images, scored on the rest): {verdict}."
        )
    stats = analysis["shift"]["image_statistics"]
    if "train" in stats and "test" in stats:
        t, s = stats["train"], stats["test"]
        out.append(
            f"Mean intensity is {t['intensity_mean']:.1f} in train and {s['intensity_mean']:.1f} in test; contrast {t['contrast_mean']:.1f} and {s['contrast_mean']:.1f}."
        )
    noise = analysis.get("label_noise_candidates")
    if noise is not None:
        out.append(
            f"{len(noise)} test images are misclassified by every model with at least {int(100 * analysis['label_noise_confidence'])} % confidence: "
            "candidates for label noise, shown in label_noise_candidates.png for review."
        )
    return out


def render(analysis: dict, max_listed: int = 30) -> str:
    lines = ["# Test-set analysis", "", "## The answer: each cause's verdict", "", verdicts_markdown(analysis), "## Findings", ""]
    lines += [f"- {f}" for f in analysis["findings"]]
    leak = analysis["leakage"]
    lines += ["", "## Leakage", "", "| splits | shared patients | exact duplicate groups | near-duplicate pairs |", "|---|---|---|---|"]
    patients = leak["patients"].get("overlap", {})
    for a, b in combinations(SPLIT_ORDER, 2):
        pair = f"{a}-{b}"
        exact = sum({f["split"] for f in g["files"]} >= {a, b} for g in leak["exact_duplicates_across_splits"])
        near = leak["near_duplicate_pairs_by_splits"][pair]
        lines.append(f"| {a} & {b} | {patients.get(pair, {}).get('n_patients', 'n/a')} | {exact} | {near} |")
    if leak["near_duplicates_across_splits"]:
        lines += ["", "Near-duplicate pairs (Hamming distance of the perceptual hashes):", ""]
        lines += [f"- `{p['file_a']}` ~ `{p['file_b']}` ({p['bits']} bits)" for p in leak["near_duplicates_across_splits"][:max_listed]]
    shift = analysis["shift"]
    lines += [
        "",
        "## Distribution shift",
        "",
        "| split | % PNEUMONIA | images | mean width | mean height | mean intensity | contrast |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, s in shift["image_statistics"].items():
        lines.append(
            f"| {split} | {100 * shift['class_balance'][split]:.1f} | {s['n']} | {s['width_mean']:.0f} | {s['height_mean']:.0f} | {s['intensity_mean']:.1f} | {s['contrast_mean']:.1f} |"
        )
    if shift.get("domain_auc") is not None:
        lines += [
            "",
            f"Train vs test, classifier on {shift['domain_features']} features: AUC {shift['domain_auc']:.3f} "
            f"[{shift.get('domain_auc_ci_low', float('nan')):.3f}, {shift.get('domain_auc_ci_high', float('nan')):.3f}].",
        ]
    if analysis.get("errors"):
        lines += [
            "",
            "## Errors on test",
            "",
            "| model | false positives | false negatives | val acc | test acc | val - test (points) |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in analysis["errors"].items():
            lines.append(
                f"| {name} | {e['false_positives']} | {e['false_negatives']} | {e['val_acc']:.3f} | {e['test_acc']:.3f} | {e['val_minus_test_points']:.1f} |"
            )
    if analysis.get("gap"):
        lines += [
            "",
            "## The validation - test gap, cause by cause (accuracy points at each model's threshold, 95 % intervals)",
            "",
            "| model | gap | leakage | prevalence (val rates / test rates) | residual | seen in test | threshold optimism | threshold oracle "
            "| val acc seen / unseen | test acc seen / unseen | ECE val / test | overconfidence val / test |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, g in analysis["gap"].items():
            c, pt = g["causes"], g["patients"]
            seen = {
                split: " / ".join(
                    f"{pt[k]['value']:.3f} (n {pt[k]['n']})" if pt[k]["n"] else "- (n 0)"
                    for k in (f"{split}_acc_seen_patients", f"{split}_acc_unseen_patients")
                )
                for split in ("val", "test")
            }
            lines.append(
                f"| {name} | {_interval(c['gap'], '')} | {_interval(c['leakage'], '')} {c['leakage']['verdict']} "
                f"| {_interval(c['prevalence'], '')} {c['prevalence']['verdict']} ({c['prevalence_at_val_rates']['value']:+.1f} / {c['prevalence_at_test_rates']['value']:+.1f}) "
                f"| {_interval(c['residual'], '')} {c['residual']['verdict']} | {_interval(c['seen_in_test'], '')} {c['seen_in_test']['verdict']} "
                f"| {c['threshold_optimism']['value']:+.1f} | {c['threshold_oracle']['value']:+.1f} | {seen['val']} | {seen['test']} "
                f"| {g['calibration']['val']['ece']:.3f} / {g['calibration']['test']['ece']:.3f} | {c['overconfidence_val']['value']:+.1f} / {c['overconfidence_test']['value']:+.1f} |"
            )
        lines += [
            "",
            f"Intervals: {next(iter(analysis['gap'].values()))['interval_method']}.",
            "",
            "Threshold (never chosen on test): test accuracy at 0.5, at the model's threshold (chosen on validation), and at the best test threshold (oracle):",
            "",
        ]
        for name, g in analysis["gap"].items():
            t = g["threshold"]
            lines.append(
                f"- {name}: {t['test_acc_at_0.5']:.3f} at 0.5; {t['test_acc_at_threshold']:.3f} at {t['operating_threshold']:.3f} (validation); "
                f"{t['oracle_test_acc']:.3f} at {t['oracle_threshold']:.3f} (oracle)"
            )
    if analysis.get("shortcuts"):
        lines += [
            "",
            f"## Shortcut check (lung box x {LUNG_BOX[0]:.2f}-{LUNG_BOX[2]:.2f}, y {LUNG_BOX[1]:.2f}-{LUNG_BOX[3]:.2f} of the image)",
            "",
            "Hidden parts filled with the training set's mean grey, or with the mean of the part left visible.",
            "",
            "| model | test AUC | lungs hidden: training grey / visible mean | only the lungs shown: training grey / visible mean "
            "| AUC lost with only the lungs shown | verdict | Grad-CAM heat in the lung box |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in analysis["shortcuts"].items():
            cell = lambda k, s=s: f"{s[k]['value']:.3f} [{s[k]['ci_low']:.3f}, {s[k]['ci_high']:.3f}]" if k in s else "-"  # noqa: E731
            share = f"{100 * s['saliency_in_lung_box']:.0f} %" if s.get("saliency_in_lung_box") is not None else "-"
            lines.append(
                f"| {name} | {cell('full')} | {cell('lungs_hidden')} / {cell('lungs_hidden_fill_visible')} "
                f"| {cell('outside_hidden')} / {cell('outside_hidden_fill_visible')} | {cell('loss_outside_hidden')} "
                f"| {shortcut_verdict(s)[0].replace('_', ' ')} | {share} |"
            )
    noise = analysis.get("label_noise_candidates") or []
    lines += ["", f"## Label-noise candidates: {len(noise)}", ""]
    lines += [f"- `{c['file']}` labelled {c['true_label']}, wrong class at {c['mean_probability_of_wrong_class']:.2f}" for c in noise[:max_listed]]
    return "\n".join(lines) + "\n"
