"""Leave-one-site-out: each site held out as the test set in turn, and how far the figures move
from site to site; the spread is what a new hospital should expect, not one test set's value."""

from __future__ import annotations

import numpy as np

SUMMARISED = ("test_acc", "test_auc", "test_sensitivity", "test_specificity")


def site_summary(per_site: dict[str, dict[str, float]]) -> dict[str, float | str]:
    """Mean, standard deviation (between sites), lowest and highest of each test figure, and the
    site where AUC was lowest. `per_site`: each held-out site's test metrics."""
    out: dict[str, float | str] = {"n_sites": len(per_site)}
    for k in SUMMARISED:
        values = np.array([m[k] for m in per_site.values() if m.get(k) is not None], float)
        if len(values):
            out |= {f"site_{k}_mean": float(values.mean()), f"site_{k}_sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan")}
            out |= {f"site_{k}_min": float(values.min()), f"site_{k}_max": float(values.max())}
    out["worst_site"] = min(per_site, key=lambda site: per_site[site].get("test_auc", np.inf))
    return out


def site_markdown(per_site: dict[str, dict[str, float]], sizes: dict[str, int], summary: dict) -> str:
    """One row per held-out site (its test figures with 95 % intervals), then the spread."""

    def ci(m: dict, k: str) -> str:
        low, high = m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high")
        return f"{m[k]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")

    lines = [
        "# Leave-one-site-out",
        "",
        "Each site held out as the test set in turn; the other sites trained and validated the model.",
        "",
        "| test site | test images | accuracy | AUC | sensitivity | specificity |",
        "|---|---|---|---|---|---|",
    ]
    for site, m in per_site.items():
        lines.append(
            f"| {site} | {sizes[site]} | {ci(m, 'test_acc')} | {ci(m, 'test_auc')} | {m['test_sensitivity']:.3f} | {m['test_specificity']:.3f} |"
        )
    lines += [
        "",
        f"Across {summary['n_sites']} sites: AUC {summary['site_test_auc_mean']:.3f} on average (sd {summary['site_test_auc_sd']:.3f}), "
        f"from {summary['site_test_auc_min']:.3f} ({summary['worst_site']}) to {summary['site_test_auc_max']:.3f}; accuracy "
        f"{summary['site_test_acc_mean']:.3f}, from {summary['site_test_acc_min']:.3f} to {summary['site_test_acc_max']:.3f}.",
        "",
    ]
    return "\n".join(lines)
