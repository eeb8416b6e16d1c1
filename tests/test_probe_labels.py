"""`ehrjepa probe --labels DIR`: each label is described by its stay's hours before prediction_time
only (embeddings and raw summaries alike), the report carries the placement, a bad DIR is one line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrjepa.data import open_processed
from ehrjepa.probe.labels import load_label_tasks
from ehrjepa.probe.prefixes import embed_prefixes, raw_prefix_features

from test_probe import FEATURES, cli, make_run, one_torch_thread, write_processed  # noqa: F401

HOUR = np.timedelta64(3600, "s")


def write_labels(folder, subject, when, value):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"subject_id": pa.array(subject, pa.int64()),
                             "prediction_time": pa.array(np.asarray(when, "datetime64[us]"), pa.timestamp("us")),
                             "boolean_value": pa.array(value, pa.bool_())}), folder / "0.parquet")


def micro_model(n_features, seed=0):
    import torch

    from ehrjepa.config import load_config
    from ehrjepa.models import build_model

    from conftest import REPO

    torch.manual_seed(seed)
    return build_model(load_config(REPO / "configs" / "micro.yaml"), n_features).eval()


def stay_column(processed, name):
    return processed.stays.column(name).to_numpy()


def test_a_label_at_hour_5_sees_hours_0_to_4_only(tmp_path, one_torch_thread):
    from ehrjepa.data import WindowDataset
    from ehrjepa.probe.embeddings import embed_stays

    data = tmp_path / "a"
    write_processed(data, n_stays=12, seed=3)
    processed = open_processed(data)
    row = int(np.flatnonzero(stay_column(processed, "n_hours") >= 24)[0])
    intime = stay_column(processed, "intime")[row]
    write_labels(tmp_path / "labels" / "t", [stay_column(processed, "subject_id")[row]],
                 [intime + 5 * HOUR + np.timedelta64(1800, "s")], [True])  # 5 h 30 min in: 5 whole hours
    (task,) = load_label_tasks(tmp_path / "labels", processed, hours=24)
    assert task.stay.tolist() == [row] and task.hours.tolist() == [5]
    model = micro_model(len(FEATURES))
    emb = embed_prefixes(model, processed, task.stay, task.hours, progress=False)
    raw = raw_prefix_features(processed, task.stay, task.hours)
    # the same as embedding the stay's first 5 hours on their own
    first5 = WindowDataset.for_hours(processed, None, 5)
    alone, stays = embed_stays(model, first5, progress=False)
    # other batch shapes round differently (2.4e-7 seen on a 2-core box): equal within float32 noise
    np.testing.assert_allclose(emb[0], alone[np.flatnonzero(stays == row)[0]], rtol=1e-5, atol=1e-5)

    def changed(hours):  # a copy of the data with the stay's values at `hours` moved
        other = tmp_path / f"b{hours.start}"
        shutil.copytree(data, other)
        mean = np.load(other / "mean.npy")
        offset = int(stay_column(processed, "offset")[row])
        mean[offset + hours.start:offset + hours.stop] = 50.0
        np.save(other / "mean.npy", mean)
        p = open_processed(other)
        return embed_prefixes(model, p, task.stay, task.hours, progress=False), raw_prefix_features(p, task.stay,
                                                                                                   task.hours)

    later = changed(range(5, 24))  # hours at or after prediction_time change nothing
    np.testing.assert_allclose(later[0], emb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(later[1], raw, rtol=1e-6, atol=1e-6)
    earlier = changed(range(4, 5))  # hour 4 is before it: both change
    assert not np.allclose(earlier[0], emb) and not np.allclose(earlier[1], raw)


def test_prefixes_of_several_lengths_keep_the_label_order(tmp_path):
    write_processed(tmp_path, n_stays=12, seed=3)
    processed = open_processed(tmp_path)
    rows = np.flatnonzero(stay_column(processed, "n_hours") >= 10)[:3]
    stay, hours = np.r_[rows, rows[0]], np.array([7, 3, 7, 3])
    raw = raw_prefix_features(processed, stay, hours)
    from ehrjepa.probe.baselines import raw_features

    for i in range(len(stay)):
        np.testing.assert_allclose(raw[i], raw_features(processed, stay[i:i + 1], int(hours[i]))[0],
                                   rtol=1e-6, atol=1e-6)


def test_probe_with_label_files_end_to_end(tmp_path, capsys, one_torch_thread):
    from ehrjepa.probe import run_probe

    data = tmp_path / "processed"
    truth = write_processed(data, n_stays=300, seed=5)
    processed = open_processed(data)
    subject, intime = stay_column(processed, "subject_id"), stay_column(processed, "intime")
    outtime = stay_column(processed, "outtime")
    # death at 12 h into every stay (the planted lactate signal), one label before a stay, two after
    # discharge, one of an unknown subject
    write_labels(tmp_path / "labels" / "death_12h",
                 np.r_[subject, subject[0], subject[:2], 1],
                 np.r_[intime + 12 * HOUR, intime[0] - HOUR, outtime[:2] + HOUR, intime[0]],
                 np.r_[truth.death.astype(bool), True, False, False, True])
    write_labels(tmp_path / "labels" / "rare", subject, intime + 6 * HOUR, np.arange(300) == 7)
    run = tmp_path / "run"
    make_run(run, len(FEATURES))
    report = run_probe(run, data, tmp_path / "report", n_bootstrap=20, progress=False, batch_size=64,
                       hours=24, labels_dir=tmp_path / "labels")
    placed = report["label_files"]["tasks"]["death_12h"]
    short = int((np.minimum(truth.n_hours, 12) < 1).sum())
    assert placed["read"] == 304 and placed["placed"] == 300 - short
    assert placed["not_placed"] == {"no_stay": 1, "before_stay": 1, "after_discharge": 2,
                                    "under_one_hour": short, "no_label": 0}
    assert list(report["tasks"]) == ["death_12h"]
    assert list(report["tasks"]["death_12h"]) == ["jepa", "random_init", "raw_features", "raw_gbdt"]
    split = np.asarray(processed.stays.column("split").to_pylist())
    assert report["tasks"]["death_12h"]["jepa"]["n"] == int((split == "test").sum())
    assert report["labels"]["death_12h"]["train"]["n"] == int((split == "train").sum())
    assert report["tasks"]["death_12h"]["raw_features"]["auroc"] > 0.8  # lactate's values, first 12 h
    assert "too few in a class" in report["skipped"]["rare"]
    assert "[0, h)" in report["pooling"] and "at most 24" in report["pooling"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Labels" in md and "| death_12h | 304 | 300 |" in md and "after_discharge 2" in md
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["label_files"]["tasks"]["rare"]["positives"] == 1
    assert not (tmp_path / "report" / "pca.png").exists()

    # the CLI: raw features only; a bad DIR or a fine-tuned method is one line, exit 1
    rc = cli(["--run", str(run), "--data", str(data), "--out", str(tmp_path / "r2"), "--labels",
              str(tmp_path / "labels"), "--methods", "raw_features", "--bootstrap", "10", "--no-progress"])
    assert rc == 0 and "| death_12h | 304 | 300 |" in capsys.readouterr().out
    for labels, methods, message in [(tmp_path / "nowhere", "raw_features", "label folder not found"),
                                     (tmp_path / "labels", "raw_features,jepa_finetune", "jepa_finetune cannot")]:
        rc = cli(["--run", str(run), "--data", str(data), "--out", str(tmp_path / "r3"), "--labels", str(labels),
                  "--methods", methods, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and err.count("\n") == 1, err
