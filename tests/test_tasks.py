"""Tests of the readmission and phenotype tasks, `phenotype_macro` and `--tasks`.

The data is test_probe's hand-built processed directory (death planted in lactate's values) with
the int8 outcome columns of `ehrjepa preprocess` added by hand: readmit_icu, readmit_30d and
phenotype_* (1 yes, 0 no, -1 unknown or excluded). phenotype_sepsis is planted like death.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrjepa.data import open_processed
from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.macro import phenotype_macro, phenotype_macro_efficiency
from ehrjepa.probe.report import (label_efficiency_notes, label_efficiency_summary, markdown, results_table,
                                  write_report)
from ehrjepa.probe.tasks import (PHENOTYPES, TASKS, class_counts, flag_labels, labels_by_split, outcome_names,
                                 parse_tasks, select_tasks)
from test_probe import FEATURES, cli, cohort_rows, make_run, write_processed


def add_outcomes(out, seed=0, phenotypes=True, readmit=True):
    """Add the int8 outcome columns to OUT/stays.parquet; returns {column: values}.

    phenotype_sepsis holds every death (planted in lactate) and a few others, phenotype_aki is noise; readmit_icu
    is -1 for the deaths (excluded), readmit_30d is -1 for a tenth of the stays (short follow-up)."""
    stays = pq.read_table(out / "stays.parquet")
    n = stays.num_rows
    rng = np.random.default_rng(seed)
    death = stays.column("death_hosp").to_numpy()
    added = {}
    if readmit:
        icu = (rng.random(n) < 0.3).astype(np.int8)
        icu[death == 1] = -1
        days = (rng.random(n) < 0.4).astype(np.int8)
        days[rng.random(n) < 0.1] = -1
        added |= {"readmit_icu": icu, "readmit_30d": days}
    if phenotypes:
        added["phenotype_sepsis"] = np.where(death == 1, 1, (rng.random(n) < 0.15)).astype(np.int8)
        aki = (rng.random(n) < 0.3).astype(np.int8)
        aki[rng.random(n) < 0.05] = -1   # admissions without diagnosis rows
        added["phenotype_aki"] = aki
    for name, values in added.items():
        stays = stays.append_column(name, pa.array(values, pa.int8()))
    pq.write_table(stays, out / "stays.parquet")
    return added


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    write_processed(out, n_stays=600, seed=2)
    added = add_outcomes(out)
    return out, added


def test_flag_labels_exclude_minus_one_and_reject_other_values():
    stays = pa.table({"readmit_icu": pa.array([1, 0, -1, None, 1], pa.int8()),
                      "phenotype_x": pa.array([0, 2, 1, 1, 1], pa.int8())})
    y = flag_labels(stays, np.array([4, 3, 2, 1, 0]), "readmit_icu")
    np.testing.assert_array_equal(y, [1, np.nan, np.nan, 0, 1])
    assert class_counts(y) == (3, 2, 2)  # known, positives, unknown: -1 and null are counted, not used
    with pytest.raises(ValueError, match="column 'phenotype_x' holds 2; expected 1, 0 or -1"):
        flag_labels(stays, np.arange(5), "phenotype_x")


def test_new_tasks_are_labelled_from_their_columns(data):
    out, added = data
    processed = open_processed(out)
    rows = {s: cohort_rows(processed, s) for s in SPLITS}
    labels, unavailable = labels_by_split(processed, rows)
    assert list(labels) == ["mortality_hosp", "los_gt_3d", "los_gt_7d", "readmit_icu", "readmit_30d",
                            "phenotype_sepsis", "phenotype_aki"]
    assert list(unavailable) == ["aki_24_72h"]  # the hand-built data has no creatinine
    for task in ("readmit_icu", "readmit_30d", "phenotype_sepsis", "phenotype_aki"):
        for split in SPLITS:
            raw = added[task][rows[split]]
            y = labels[task][split]
            assert np.array_equal(np.isnan(y), raw == -1), (task, split)
            assert np.array_equal(y[raw != -1], raw[raw != -1])
    # a death is excluded from readmit_icu, not counted as "not readmitted"
    death = processed.stays.column("death_hosp").to_numpy()[rows["train"]]
    assert death.sum() > 0 and np.isnan(labels["readmit_icu"]["train"][death == 1]).all()
    assert outcome_names("phenotype_sepsis") == ("no sepsis diagnosis", "sepsis diagnosis")
    assert outcome_names("phenotype_copd") == ("no copd diagnosis", "copd diagnosis")


def test_missing_columns_make_tasks_unavailable_with_one_line_reasons(tmp_path):
    write_processed(tmp_path, n_stays=200, seed=3)  # processed before these columns existed
    processed = open_processed(tmp_path)
    rows = {s: cohort_rows(processed, s) for s in SPLITS}
    labels, unavailable = labels_by_split(processed, rows)
    assert set(unavailable) == {"readmit_icu", "readmit_30d", PHENOTYPES, "aki_24_72h"}
    assert not any(t.startswith("phenotype_") for t in labels)
    assert "no readmit_30d column" in unavailable["readmit_30d"]
    assert "no phenotype_* columns" in unavailable[PHENOTYPES] and "diagnoses_icd" in unavailable[PHENOTYPES]
    assert all("\n" not in why for why in unavailable.values())
    # every task of TASKS is labelled or says why (the sweep's objective and the demo rely on it)
    assert set(TASKS) <= set(labels) | set(unavailable)


def test_parse_and_select_tasks(data):
    out, _ = data
    processed = open_processed(out)
    labels, unavailable = labels_by_split(processed, {s: cohort_rows(processed, s) for s in SPLITS})
    assert parse_tasks("mortality_hosp, phenotypes,mortality_hosp") == ["mortality_hosp", "phenotypes"]
    kept, why = select_tasks(labels, unavailable, ["readmit_30d", "phenotypes", "mortality_hosp"])
    assert list(kept) == ["mortality_hosp", "readmit_30d", "phenotype_sepsis", "phenotype_aki"] and why == {}
    assert select_tasks(labels, unavailable, None) == (labels, unavailable)
    for bad in ("mortality", "phenotype_macro", ""):
        with pytest.raises(ValueError, match="--tasks: .*choose from mortality_hosp, .*phenotypes"):
            parse_tasks(bad)
    # a phenotype this data does not have: one line naming the file and the known tasks
    with pytest.raises(ValueError, match=r"stays.parquet: no task 'phenotype_shock' in this data; known: .*phenotype_aki"):
        select_tasks(labels, unavailable, ["phenotype_shock"], where="stays.parquet")


def test_phenotypes_on_data_without_them_are_skipped_not_an_error(tmp_path):
    write_processed(tmp_path, n_stays=200, seed=3)
    processed = open_processed(tmp_path)
    labels, unavailable = labels_by_split(processed, {s: cohort_rows(processed, s) for s in SPLITS})
    kept, why = select_tasks(labels, unavailable, ["mortality_hosp", "phenotypes"])
    assert list(kept) == ["mortality_hosp"] and list(why) == [PHENOTYPES]
    with pytest.raises(ValueError, match="no task 'phenotype_sepsis'.*no phenotype_\\* columns"):
        select_tasks(labels, unavailable, ["phenotype_sepsis"])


def test_phenotype_macro_is_the_mean_over_the_scored_phenotypes():
    tasks = {"mortality_hosp": {"a": {"auroc": 0.99, "auprc": 0.9}},
             "phenotype_x": {"a": {"auroc": 0.6, "auprc": 0.2}, "b": {"auroc": 0.5, "auprc": 0.1}},
             "phenotype_y": {"a": {"auroc": 0.8, "auprc": 0.4}, "b": {"auroc": 0.7, "auprc": 0.3}}}
    macro = phenotype_macro(tasks)
    assert macro["a"]["auroc"] == pytest.approx(0.7) and macro["a"]["auprc"] == pytest.approx(0.3)
    assert macro["b"]["auroc"] == pytest.approx(0.6) and macro["b"]["tasks"] == ["phenotype_x", "phenotype_y"]
    assert phenotype_macro({"mortality_hosp": tasks["mortality_hosp"]}) is None

    def entry(auroc, repeats):
        return {"auroc_mean": auroc, "auroc_sd": 0.1, "auprc_mean": auroc / 2, "auprc_sd": 0.1, "n_train": 10,
                "positives_train": 3, "n_val": 5, "positives_val": 2, "repeats": repeats,
                "repeats_skipped": 3 - repeats, "skip_reasons": [f"repeat {r}: too few" for r in range(3 - repeats)]}

    efficiency = {"mortality_hosp": {"a": {"0.1": entry(0.9, 3), "1": entry(0.95, 3)}},
                  "phenotype_x": {"a": {"0.1": entry(0.6, 2), "1": entry(0.7, 3)}},
                  "phenotype_y": {"a": {"0.1": entry(float("nan"), 0), "1": entry(0.9, 3)}}}
    macro = phenotype_macro_efficiency(efficiency)["a"]
    # per fraction: the mean over phenotypes of each one's mean over repeats; all-skipped ones left out
    assert macro["1"]["auroc_mean"] == pytest.approx(0.8) and macro["1"]["auprc_mean"] == pytest.approx(0.4)
    assert macro["0.1"]["auroc_mean"] == pytest.approx(0.6) and macro["0.1"]["tasks"] == ["phenotype_x"]
    assert macro["0.1"]["repeats"] == 2 and macro["1"]["auroc_sd"] is None
    assert phenotype_macro_efficiency({"mortality_hosp": efficiency["mortality_hosp"]}) is None
    notes = label_efficiency_notes({"label_efficiency": efficiency | {"phenotype_macro": {"a": macro}}})
    assert "phenotype_macro at fraction 0.1 averages 1 of 2 phenotypes (phenotype_y: every repeat skipped)" in notes
    assert not any("phenotype_macro at fraction 1 " in n for n in notes)


def test_probe_with_tasks_end_to_end(data, tmp_path, capsys):
    """--tasks picks the tasks; the phenotypes and their macro land in report.json, the tables and
    the plots; the planted phenotype is found; a task the data lacks is a one-line error."""
    out, _ = data
    make_run(tmp_path / "run", len(FEATURES))
    base = ["--run", str(tmp_path / "run"), "--data", str(out), "--bootstrap", "20", "--device", "cpu",
            "--no-progress", "--methods", "raw_features,raw_gbdt"]
    rc = cli(base + ["--out", str(tmp_path / "r"), "--tasks", "readmit_icu,phenotypes",
                     "--label-fractions", "0.5,1", "--repeats", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(report["tasks"]) == ["readmit_icu", "phenotype_sepsis", "phenotype_aki"]
    assert report["skipped"] == {}
    assert report["tasks"]["phenotype_sepsis"]["raw_features"]["auroc"] > 0.65   # planted in lactate (0.71 here)
    assert abs(report["tasks"]["phenotype_aki"]["raw_features"]["auroc"] - 0.5) < 0.2  # noise
    macro = report["phenotype_macro"]
    for method in ("raw_features", "raw_gbdt"):
        expected = np.mean([report["tasks"][t][method]["auroc"] for t in ("phenotype_sepsis", "phenotype_aki")])
        assert macro[method]["auroc"] == pytest.approx(expected)
    assert macro["raw_features"]["tasks"] == ["phenotype_sepsis", "phenotype_aki"]
    # the -1 labels are left out and counted
    counts = report["labels"]["readmit_icu"]["test"]
    assert counts["unknown"] > 0 and counts["n"] == report["tasks"]["readmit_icu"]["raw_features"]["n"]
    efficiency = report["label_efficiency"]
    assert list(efficiency) == ["readmit_icu", "phenotype_sepsis", "phenotype_aki", "phenotype_macro"]
    for key in ("0.5", "1"):
        expected = np.mean([efficiency[t]["raw_gbdt"][key]["auroc_mean"] for t in ("phenotype_sepsis", "phenotype_aki")])
        assert efficiency["phenotype_macro"]["raw_gbdt"][key]["auroc_mean"] == pytest.approx(expected)
    assert (tmp_path / "r" / "label_efficiency_phenotype_macro.png").is_file()
    assert "| phenotype_macro | raw_features |" in printed          # the default table
    assert "| phenotype_macro | raw_features | " in label_efficiency_summary(report)
    assert "AUROC at 0.5 | AUROC at 1 |" in printed                  # the compact label-efficiency table
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| phenotype_macro | raw_gbdt | 1 |" in md and "phenotype_macro: each method's mean" in md

    # a task the data lacks, and a name that is no task at all: one line each
    rc = cli(base + ["--out", str(tmp_path / "bad"), "--tasks", "phenotype_shock"])
    err = capsys.readouterr().err
    assert rc == 1 and "no task 'phenotype_shock' in this data; known:" in err and len(err.strip().splitlines()) == 1
    rc = cli(base + ["--out", str(tmp_path / "bad"), "--tasks", "mortality,los_gt_3d"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tasks: mortality: choose from" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_report_tables_with_a_macro_and_a_skipped_phenotype_group(tmp_path):
    report = {"tasks": {"phenotype_x": {"m": {"auroc": 0.7, "auroc_ci": [0.6, 0.8], "auprc": 0.3,
                                              "auprc_ci": [0.2, 0.4], "n": 50, "positives": 10}}},
              "phenotype_macro": {"m": {"auroc": 0.7, "auprc": 0.3, "tasks": ["phenotype_x"]}},
              "skipped": {PHENOTYPES: "stays.parquet has no phenotype_* columns"}, "pooling": "p", "hours": 24}
    table = results_table(report)
    assert "| phenotype_macro | m | 0.700 (mean of 1 phenotypes) | 0.300 | | |" in table
    assert "| phenotypes | (skipped) | stays.parquet has no phenotype_* columns |" in table
    write_report(report, tmp_path)
    assert "phenotype_macro" in markdown(json.loads((tmp_path / "report.json").read_text()))
    assert math.isfinite(report["phenotype_macro"]["m"]["auroc"])
