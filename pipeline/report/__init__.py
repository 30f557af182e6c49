"""The comparison report: plain rows (read from the store by `tracking.comparison`) in, text and
figures out; the compare step writes and logs them.

- `tables`: the comparison table (Markdown, CSV), the paired tests, seeds' spread, ranking, external sets;
- `figures`: learning curves, accuracy and time, the gap's waterfall, reliability, ROC;
- `page`: one self-contained HTML page;
- `model_card`: what a user of one model needs to know.
"""

from pipeline.report.figures import (
    accuracy_and_time_figure,
    figure_png,
    gap_waterfall_figure,
    learning_curves_figure,
    reliability_figure,
    roc_figure,
)
from pipeline.report.model_card import external_card_lines, model_card, population, with_external_line
from pipeline.report.page import html_page
from pipeline.report.tables import (
    COLUMNS,
    external_markdown,
    label,
    pairwise_markdown,
    rank_on_validation,
    table_csv,
    table_markdown,
    with_seed_spread,
)

__all__ = [
    "COLUMNS",
    "accuracy_and_time_figure",
    "external_card_lines",
    "external_markdown",
    "figure_png",
    "gap_waterfall_figure",
    "html_page",
    "label",
    "learning_curves_figure",
    "model_card",
    "pairwise_markdown",
    "population",
    "rank_on_validation",
    "reliability_figure",
    "roc_figure",
    "table_csv",
    "table_markdown",
    "with_external_line",
    "with_seed_spread",
]
