"""One self-contained HTML page of the comparison: the answer, the table, the paired tests, the
figures embedded and the analysis."""

from __future__ import annotations

import base64
import html

from pipeline.report.tables import COLUMNS, TABLE_NOTES, cell


def _verdict_cells(v: dict) -> list[str]:
    size = "" if v["value"] is None else f"{v['value']:.3g} [{v['ci_low']:.3g}, {v['ci_high']:.3g}]"
    rate = "" if v["false_cause_rate"] is None else f"{v['false_cause_rate']:.2f}"
    return [v["model"], v["cause"], size, v["verdict"], rate]


def html_page(
    title: str, rows: list[dict], pairs: list[dict], figures: dict[str, bytes], analysis_markdown: str, findings: list[str], verdicts: list[dict]
) -> str:
    """One self-contained page: the answer (the verdicts), the table, the paired tests, the
    figures (embedded) and the analysis."""
    verdict_rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in _verdict_cells(v)) + "</tr>" for v in verdicts)
    columns = [(k, t) for k, t in COLUMNS if k != "seeds" or any(r.get("seed_spread", {}).get("n", 1) > 1 for r in rows)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(k, r))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    pair_rows = "".join(
        f"<tr><td>{html.escape(p['a'])}</td><td>{html.escape(p['b'])}</td><td>{p['acc_a']:.3f} / {p['acc_b']:.3f}</td>"
        f"<td>{p['acc']['p_value']:.3g} ({p['acc']['p_holm']:.3g})</td><td>{'yes' if p['acc']['distinguishable'] else 'no'}</td>"
        f"<td>{p['auc']['auc_a']:.3f} / {p['auc']['auc_b']:.3f}</td><td>{p['auc']['p_value']:.3g} ({p['auc']['p_holm']:.3g})</td>"
        f"<td>{'yes' if p['auc']['distinguishable'] else 'no'}</td></tr>"
        for p in pairs
    )
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in figures.items()
    )
    items = "".join(f"<li>{html.escape(f)}</li>" for f in findings)
    pair_method = f"accuracy by {pairs[0]['acc']['method']}, AUC by {pairs[0]['auc']['method']}" if pairs else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f0f0f0; }} td:nth-child(-n+2) {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>The answer: why the test set disagrees</h2>
<table id="verdicts"><thead><tr><th>model</th><th>cause</th><th>size [95 % CI]</th><th>verdict</th><th>false-cause rate (this design)</th></tr></thead><tbody>{verdict_rows}</tbody></table>
<h2>Configurations</h2>
<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{html.escape(TABLE_NOTES)}</p>
<h2>Can this test set tell them apart?</h2>
<p>Paired on the same test images, each model at its own threshold: {html.escape(pair_method)}; p-values with their Holm adjustment in brackets; distinguishable when the adjusted p &lt; 0.05.</p>
<table id="pairwise"><thead><tr><th>A</th><th>B</th><th>accuracy A / B</th><th>p (Holm)</th><th>accuracy distinguishable</th><th>AUC A / B</th><th>p (Holm)</th><th>AUC distinguishable</th></tr></thead><tbody>{pair_rows}</tbody></table>
<h2>Why the test set disagrees</h2>
<ul id="findings">{items}</ul>
<h2>Figures</h2>
{images}
<h2>Test-set analysis in full</h2>
<pre>{html.escape(analysis_markdown)}</pre>
</body></html>
"""
