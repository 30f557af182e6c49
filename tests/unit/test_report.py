"""The comparison report from a store holding known runs: every number in the table is the run's."""

import csv
import io

import mlflow
import pytest

from pipeline import report, tracking

KNOWN = [
    # backbone, mode, lr, train_acc, val_acc, test_acc, auc, sens, spec, time, epochs
    ("resnet50", "finetune", 3e-5, 0.99, 0.97, 0.81, 0.93, 0.98, 0.52, 812.4, 7),
    ("efficientnet_b0", "frozen", 2e-3, 0.93, 0.92, 0.77, 0.90, 0.95, 0.47, 35.1, 10),
]


def log_configuration(backbone, mode, lr, train_acc, val_acc, test_acc, auc, sens, spec, seconds, epochs):
    with tracking.step_run("main", backbone, mode):
        with tracking.step_run("train", backbone, mode) as train:
            mlflow.log_params({"lr": str(lr)})
            mlflow.log_metrics({"train_time_s": seconds, "operating_threshold": 0.42})
            mlflow.set_tag("epochs_run", str(epochs))
            for e in range(1, epochs + 1):
                mlflow.log_metrics({"train_loss": 1 / e, "train_acc": 1 - 0.5 / e, "val_loss": 1.2 / e, "val_acc": 1 - 0.6 / e}, step=e)
        with tracking.step_run("evaluate", backbone, mode) as evaluate:
            # At 0.5 the figures are a point lower: the table must show those at the operating threshold.
            mlflow.log_metrics(
                {
                    "train_acc": train_acc - 0.01,
                    "val_acc": val_acc - 0.01,
                    "test_acc": test_acc - 0.01,
                    "test_auc": auc,
                    "test_sensitivity": sens - 0.01,
                    "test_specificity": spec - 0.01,
                    "test_acc_ci_low": test_acc - 0.05,
                    "test_acc_ci_high": test_acc + 0.02,
                    "test_auc_ci_low": auc - 0.02,
                    "test_auc_ci_high": auc + 0.02,
                    "train_acc_at_val_threshold": train_acc,
                    "val_acc_at_val_threshold": val_acc,
                    "test_acc_at_val_threshold": test_acc,
                    "test_sensitivity_at_val_threshold": sens,
                    "test_specificity_at_val_threshold": spec,
                    "test_acc_at_val_threshold_ci_low": test_acc - 0.04,
                    "test_acc_at_val_threshold_ci_high": test_acc + 0.03,
                    "test_sensitivity_at_val_threshold_ci_low": sens - 0.02,
                    "test_sensitivity_at_val_threshold_ci_high": sens + 0.01,
                    "test_specificity_at_val_threshold_ci_low": spec - 0.05,
                    "test_specificity_at_val_threshold_ci_high": spec + 0.05,
                }
            )
            mlflow.set_tag("interval_method", "patient bootstrap (3 patients or copies of one picture, 1 to 2 images each)")
            for split in ("val", "test"):
                mlflow.log_text(
                    "file,true_label,probability,predicted_label\na.png,NORMAL,0.2,NORMAL\nb.png,PNEUMONIA,0.7,PNEUMONIA\nc.png,NORMAL,0.9,PNEUMONIA\n",
                    f"predictions/{split}.csv",
                )
        mlflow.set_tags({"train_run_id": train.info.run_id, "evaluate_run_id": evaluate.info.run_id, "lr_source": "tuned"})


@pytest.fixture
def compare_run(store):
    with tracking.step_run("compare") as compare:
        for row in KNOWN:
            log_configuration(*row)
    return compare.info.run_id


def test_rows_are_read_back_from_the_store(compare_run):
    rows = tracking.comparison(compare_run)
    assert [(r["backbone"], r["mode"]) for r in rows] == [(k[0], k[1]) for k in KNOWN]
    for row, known in zip(rows, KNOWN):
        _, _, lr, train_acc, val_acc, test_acc, auc, sens, spec, seconds, epochs = known
        assert (row["lr"], row["train_acc_at_val_threshold"], row["val_acc_at_val_threshold"], row["test_acc_at_val_threshold"], row["test_auc"]) == (
            lr,
            train_acc,
            val_acc,
            test_acc,
            auc,
        )
        assert (row["test_sensitivity_at_val_threshold"], row["test_specificity_at_val_threshold"], row["train_time_s"], row["epochs_run"]) == (
            sens,
            spec,
            seconds,
            epochs,
        )
        assert row["operating_threshold"] == 0.42 and row["interval_method"].startswith("patient bootstrap")
        assert [h["epoch"] for h in row["history"]] == list(range(1, epochs + 1))
        assert row["history"][-1]["val_acc"] == pytest.approx(1 - 0.6 / epochs)
        assert [p["file"] for p in row["test_predictions"]] == ["a.png", "b.png", "c.png"] == [p["file"] for p in row["val_predictions"]]
        assert (row["test_acc_at_val_threshold_ci_low"], row["test_auc_ci_high"]) == (test_acc - 0.04, auc + 0.02)
        assert row["lr_source"] == "tuned" and row["seed_index"] == 0


def test_tables_show_exactly_those_numbers(compare_run):
    rows = tracking.comparison(compare_run)
    markdown = report.table_markdown(rows)
    assert (
        "| finetune | resnet50 | 3e-05 (tuned) | 0.42 | 0.990 | 0.970 | 0.810 [0.770, 0.840] | 0.930 [0.910, 0.950] | 0.980 [0.960, 0.990] "
        "| 0.520 [0.470, 0.570] | 812.4 |  | 7 |"
    ) in markdown
    assert (
        "| frozen | efficientnet_b0 | 0.002 (tuned) | 0.42 | 0.930 | 0.920 | 0.770 [0.730, 0.800] | 0.900 [0.880, 0.920] | 0.950 [0.930, 0.960] "
        "| 0.470 [0.420, 0.520] | 35.1 |  | 10 |"
    ) in markdown
    assert "operating threshold" in markdown
    assert "over seeds" not in markdown  # one seed: no spread column
    parsed = list(csv.DictReader(io.StringIO(report.table_csv(rows))))
    assert [float(r["test_acc_at_val_threshold"]) for r in parsed] == [0.81, 0.77] and parsed[0]["train_run_id"] == rows[0]["train_run_id"]
    assert [float(r["test_acc"]) for r in parsed] == pytest.approx([0.80, 0.76])  # at 0.5, labelled by its own column


def test_figures_and_a_self_contained_page(compare_run):
    rows = tracking.comparison(compare_run)
    figures = {
        "learning_curves.png": report.figure_png(report.learning_curves_figure(rows)),
        "accuracy_and_time.png": report.figure_png(report.accuracy_and_time_figure(rows)),
        "roc_curves.png": report.figure_png(report.roc_figure(rows, "PNEUMONIA")),
    }
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    verdicts = [
        {
            "model": "resnet50 (finetune)",
            "cause": "leakage",
            "value": 1.5,
            "ci_low": 0.2,
            "ci_high": 2.8,
            "verdict": "supported",
            "false_cause_rate": 0.04,
        }
    ]
    page = report.html_page("study", rows, [], figures, "# analysis", ["Validation beats test."], verdicts)
    assert "<td>leakage</td><td>1.5 [0.2, 2.8]</td><td>supported</td><td>0.04</td>" in page
    assert page.count("data:image/png;base64,") == 3 and 'src="http' not in page
    assert "<td>resnet50</td>" in page and "<li>Validation beats test.</li>" in page


def test_a_train_run_started_with_lr_auto_reads_its_resolved_rate(store, monkeypatch):
    """`mlflow run -e train -P lr=auto` logs lr as typed and the rate used as `lr_resolved`; a
    compare whose main reused that train run reads the rate, not the word."""
    real = mlflow.log_params
    monkeypatch.setattr(mlflow, "log_params", lambda p: real({"lr": "auto", "lr_resolved": "0.0001"} if set(p) == {"lr"} else p))
    with tracking.step_run("compare") as compare:
        log_configuration(*KNOWN[0])
    assert tracking.comparison(compare.info.run_id)[0]["lr"] == 0.0001


def test_a_compare_run_without_configurations_has_no_rows(store):
    with tracking.step_run("compare") as empty:
        pass
    assert tracking.comparison(empty.info.run_id) == []


def test_the_model_card_says_whom_the_images_show():
    assert "synthetic" in report.population("demo", True)
    assert "paediatric" in report.population("chest_xray", True)
    other = report.population("hospital-x", False)
    assert "hospital-x" in other and "paediatric" not in other


def test_the_card_names_each_external_validation_once():
    figures = ("auc", "acc", "sensitivity", "specificity", "drop_auc", "drop_acc", "drop_acc_class_balance")
    metrics = {f"external_{k}{s}": v for k in figures for s, v in (("", 0.8), ("_ci_low", 0.7), ("_ci_high", 0.9))}
    metrics |= {"shift_auc": 0.97, "shift_auc_ci_low": 0.95, "shift_auc_ci_high": 0.99, "external_n_shared_with_train": 3}
    assert report.external_card_lines("m (frozen)", {}, "kermany") == [
        "- not validated outside kermany: its figures hold for images like kermany's test set, and nothing here says how it does elsewhere"
    ]
    (line,) = report.external_card_lines("m (frozen)", {"d": {"source": "/data/nih", "n_images": 383, "models": {"m (frozen)": metrics}}}, "kermany")
    assert line.startswith("- /data/nih (383 images): AUC 0.800 [0.700, 0.900]") and "shift AUC 0.970 [0.950, 0.990]; 3 of its images" in line
    card = "# m\n\n## External validation\n- not validated outside kermany: ...\n\n## Known limits\n- one centre\n"
    once = report.with_external_line(card, line, "/data/nih")
    assert "not validated" not in once and once.count("- /data/nih (") == 1 and once.index(line) < once.index("## Known limits")
    again = report.with_external_line(once, line.replace("383 images", "384 images"), "/data/nih")
    assert again.count("- /data/nih (") == 1 and "384 images" in again
    assert "## External validation" in report.with_external_line("# old card\n\n## Known limits\n- x\n", line, "/data/nih")
