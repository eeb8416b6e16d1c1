"""MEDS label files (ACES output) -> (stay row, hours to embed, label): never past
prediction_time; labels before a stay, after discharge, of unknown subjects are counted."""
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrjepa.probe.labels import place_labels, read_label_files


def T(text):
    return datetime.fromisoformat(text)


STAYS = pa.table({  # rows: subject 1 has two stays, subject 2 one of 0 hours
    "subject_id": pa.array([1, 1, 2], pa.int64()),
    "intime": pa.array([T("2150-01-05 00:00"), T("2150-01-01 00:00"), T("2151-01-01 00:00")],
                       pa.timestamp("s")),
    "outtime": pa.array([T("2150-01-06 12:30"), T("2150-01-02 00:00"), T("2151-01-01 00:00")],
                        pa.timestamp("s")),
    "n_hours": pa.array([37, 24, 0], pa.int32()),
})


def labels(rows):
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "prediction_time": pa.array([T(r[1]) for r in rows], pa.timestamp("us")),
                     "boolean_value": pa.array([r[2] for r in rows], pa.bool_())})


def test_hours_up_to_prediction_time_never_after():
    task = place_labels("t", labels([
        (1, "2150-01-01 05:59", True),    # stay row 1, 5 whole hours
        (1, "2150-01-05 23:59:59", False),  # stay row 0, 23 whole hours
        (1, "2150-01-06 12:30", True),    # at outtime: 36 whole hours, capped at 24
        (1, "2149-12-31 23:00", True),    # before the first stay
        (1, "2150-01-03 00:00", False),   # after the first stay's discharge, before the second
        (1, "2150-01-07 00:00", False),   # after the last discharge
        (2, "2151-01-01 00:00", True),    # a stay of 0 hours: under one hour
        (3, "2150-01-01 00:00", True),    # no stay
        (1, "2150-01-01 00:30", True),    # inside, but no whole hour yet
        (1, "2150-01-01 10:00", None),    # no label
    ]), STAYS, hours=24)
    assert task.stay.tolist() == [1, 0, 0]
    assert task.hours.tolist() == [5, 23, 24]
    assert task.label.tolist() == [1, 0, 1]
    assert task.n_read == 10
    assert task.dropped == {"no_stay": 1, "before_stay": 1, "after_discharge": 2,
                            "under_one_hour": 2, "no_label": 1}
    assert "3 placed (2 positive)" in task.summary()


def test_read_label_files_task_folders(tmp_path):
    for task in ("mortality", "readmission"):
        (tmp_path / task).mkdir()
        pq.write_table(labels([(1, "2150-01-01 05:00", True)]), tmp_path / task / "0.parquet")
    (tmp_path / ".logs" / "multirun").mkdir(parents=True)  # what an ACES multirun leaves: no task
    tasks = read_label_files(tmp_path)
    assert sorted(tasks) == ["mortality", "readmission"]
    assert tasks["mortality"]["prediction_time"].type == pa.timestamp("s")
    one = read_label_files(tmp_path / "mortality")  # a folder of parquet files is one task
    assert list(one) == ["mortality"]


def test_bad_label_files(tmp_path):
    (tmp_path / "t").mkdir()
    pq.write_table(labels([(1, "2150-01-01 05:00", True)]).drop(["boolean_value"]),
                   tmp_path / "t" / "0.parquet")
    with pytest.raises(ValueError, match=r"0\.parquet: missing label column 'boolean_value'"):
        read_label_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        read_label_files(tmp_path / "nothing")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no label parquet files"):
        read_label_files(tmp_path / "empty")


def test_no_stays_at_all():
    empty = STAYS.slice(0, 0)
    task = place_labels("t", labels([(1, "2150-01-01 05:00", True)]), empty, hours=24)
    assert len(task.stay) == 0 and task.dropped["no_stay"] == 1
    assert np.asarray(task.hours).dtype == np.int64
