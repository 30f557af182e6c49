"""Why the test set disagrees, and how sure each figure is: one module per question, plain arrays
and manifest rows in, numbers and sentences out (nothing here speaks to MLflow).

- `leakage`: exact and near-identical images and patients across splits;
- `shift`: class balance, image statistics, train-vs-test separability;
- `mistakes`: label-noise candidates and the error breakdown;
- `resampling`: the patient (cluster) bootstrap behind every interval;
- `uncertainty`: intervals of test figures and paired tests between models;
- `gap`: the validation - test gap split into its causes, threshold and calibration;
- `shortcuts`: the test set scored with the lung box hidden and with all but it hidden;
- `simulation`: studies where the truth is known, for each verdict's false-cause rate and power;
- `findings`: all of it in plain words, and as Markdown.
"""

from pipeline.analysis.findings import findings, render
from pipeline.analysis.gap import calibration, gap_causes
from pipeline.analysis.leakage import leakage
from pipeline.analysis.mistakes import error_breakdown, label_noise_candidates
from pipeline.analysis.shift import class_balance, domain_shift, image_statistics
from pipeline.analysis.uncertainty import metric_intervals, pairwise_tests
from pipeline.analysis.verdicts import verdict_rows, verdicts_markdown

__all__ = [
    "calibration",
    "class_balance",
    "domain_shift",
    "error_breakdown",
    "findings",
    "gap_causes",
    "image_statistics",
    "label_noise_candidates",
    "leakage",
    "pairwise_tests",
    "render",
    "metric_intervals",
    "verdict_rows",
    "verdicts_markdown",
]
