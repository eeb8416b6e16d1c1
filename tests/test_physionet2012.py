"""`ehrjepa preprocess --physionet2012`: a hand-built mini challenge set against its answers,
the reader against a plain-Python reference on random files, bad input through the real CLI,
--splits, and the real sets where ../shared/physionet2012 is present."""
import io
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ehrjepa.data.catalog import load_catalog
from ehrjepa.data.physionet2012 import Physionet2012Source
from ehrjepa.data.processed import open_processed
from ehrjepa.data.build import build

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "physionet2012"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
OUTCOMES_HEAD = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"


def descriptors(rid, age=70, gender=1, height=-1, icu=3, weight=80.0):
    return [("00:00", "RecordID", rid), ("00:00", "Age", age), ("00:00", "Gender", gender),
            ("00:00", "Height", height), ("00:00", "ICUType", icu), ("00:00", "Weight", weight)]


def text(lines):
    return "Time,Parameter,Value\n" + "".join(f"{t},{p},{v}\n" for t, p, v in lines)


def write_set(root: Path, name: str, stays: dict, outcomes: list | None = None,
              tarball: bool = False) -> Path:
    """stays: {RecordID: [(time, param, value), ...]}; outcomes rows (RecordID, saps, sofa, los,
    survival, death). Returns the set folder or tarball."""
    root.mkdir(parents=True, exist_ok=True)
    if outcomes is not None:
        (root / f"Outcomes-{name}.txt").write_text(
            OUTCOMES_HEAD + "\n" + "".join(",".join(map(str, r)) + "\n" for r in outcomes))
    if tarball:
        path = root / f"set-{name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for rid, lines in stays.items():
                data = (lines if isinstance(lines, str) else text(lines)).encode()
                info = tarfile.TarInfo(f"set-{name}/{rid}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path
    folder = root / f"set-{name}"
    folder.mkdir()
    for rid, lines in stays.items():
        (folder / f"{rid}.txt").write_text(lines if isinstance(lines, str) else text(lines))
    return folder


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ehrjepa", "preprocess", "--no-progress", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout)


MINI = {
    132001: descriptors(132001, age=54, gender=0, height=162.6, icu=4, weight=-1) + [
        ("00:07", "HR", 73), ("00:37", "HR", 77), ("00:50", "Urine", 900), ("00:59", "Urine", 60),
        ("01:00", "Urine", 30), ("01:10", "FiO2", 0.5), ("01:20", "MechVent", 1),
        ("02:00", "Weight", 81.5), ("02:30", "Weight", 82.5), ("47:59", "HR", 90),
        ("48:00", "HR", 100), ("03:00", "Temp", -17.8),  # out of range: dropped
        ("05:00", "", 3)],  # an empty parameter name
    132002: descriptors(132002, age=80, gender=1, height=180, icu=1, weight=70) + [
        ("00:00", "HR", 110), ("10:15", "NISysABP", 120), ("10:45", "NISysABP", 130),
        ("10:45", "SysABP", 140)],
    132003: descriptors(132003, age=-1, gender=-1, icu=2, weight=-1),  # no time series at all
}
MINI_OUTCOMES = [(132001, 6, 1, 5, -1, 0), (132002, 16, 8, 8, 7, 1), (132003, -1, -1, -1, -1, 0)]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("p12")
    stays = {k: [x for x in v if x[1] != ""] for k, v in MINI.items()}
    write_set(root / "data", "a", stays, MINI_OUTCOMES)
    done = cli("--physionet2012", root / "data", "--out", root / "out")
    assert done.returncode == 0, done.stderr
    return open_processed(root / "out")


def value(p, rid, hour, feature):
    row = int(np.flatnonzero(p.stays["stay_id"].to_numpy() == rid)[0])
    return float(p.mean[p.offset[row] + hour, p.features.index(feature)]), \
        int(p.count[p.offset[row] + hour, p.features.index(feature)])


def test_mini_set_hourly_values(mini):
    p = mini
    assert p.n_stays == 3 and list(p.n_hours) == [48, 48, 48]
    assert p.features == load_catalog().for_source("physionet2012").names
    assert value(p, 132001, 0, "heart_rate") == (pytest.approx(75.0), 2)
    assert value(p, 132001, 0, "urine_output") == (pytest.approx(960.0), 2)  # a sum
    assert value(p, 132001, 1, "urine_output") == (pytest.approx(30.0), 1)
    assert value(p, 132001, 1, "fio2") == (pytest.approx(50.0), 1)  # fraction -> percent
    assert value(p, 132001, 1, "mech_vent") == (pytest.approx(1.0), 1)
    assert value(p, 132001, 2, "weight") == (pytest.approx(82.5), 2)  # last of the hour
    assert value(p, 132001, 47, "heart_rate") == (pytest.approx(95.0), 2)  # 47:59 and 48:00
    assert math.isnan(value(p, 132001, 3, "temperature")[0])
    assert value(p, 132002, 10, "nibp_sys") == (pytest.approx(125.0), 2)
    assert value(p, 132002, 10, "sbp") == (pytest.approx(140.0), 1)
    assert value(p, 132002, 0, "heart_rate") == (pytest.approx(110.0), 1)
    assert int(p.count[p.offset[2]:p.offset[2] + 48].sum()) == 0


def test_mini_set_stay_columns_and_labels(mini):
    s = mini.stays.to_pydict()
    assert s["stay_id"] == s["subject_id"] == [132001, 132002, 132003]
    assert s["age"] == [54, 80, None] and s["sex"] == [0, 1, None]
    assert s["height_cm"] == [162.6, 180, None] and s["icu_type"] == [4, 1, 2]
    assert s["weight_kg"] == [81.5, 70, None]  # the descriptor, else the first Weight line
    assert s["death_hosp"] == [0, 1, 0] and s["los_days"] == [5, 8, None]
    assert s["saps1"] == [6, 16, None] and s["sofa"] == [1, 8, None]
    assert s["survival_days"] == [None, 7, None] and s["set"] == ["a", "a", "a"]
    t = mini.manifest["tables"]["set-a"]
    assert t["rows_read"] == t["rows_kept"] + sum(t["dropped"].values())
    assert t["dropped"]["out_of_range"] == 1 and t["descriptor_lines"] == 18
    assert mini.manifest["source"] == "physionet2012"


def test_tarball_and_folder_agree(tmp_path):
    stays = {k: [x for x in v if x[1] != ""] for k, v in MINI.items()}
    folder = write_set(tmp_path / "f", "a", stays, MINI_OUTCOMES)
    tarball = write_set(tmp_path / "t", "a", stays, MINI_OUTCOMES, tarball=True)
    a = open_processed(build(Physionet2012Source([folder]), tmp_path / "oa", progress=False))
    b = open_processed(build(Physionet2012Source([tarball]), tmp_path / "ob", progress=False))
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_allclose(a.mean, b.mean, equal_nan=True)
    assert a.stays.drop_columns([]).to_pydict() == b.stays.to_pydict()


# ---- the reader against a plain-Python reference


def reference(stays: dict, catalog):
    """{(rid, hour, feature): (value, count)} by the rules, in plain Python."""
    params = catalog.params("physionet2012")
    low, high = catalog.valid_ranges()
    agg = {f.name: f.aggregation for f in catalog.features}
    names = catalog.names
    out = {}
    for rid, lines in stays.items():
        weight_seen = False
        for t, p, v in lines:
            if p in ("RecordID", "Age", "Gender", "Height", "ICUType"):
                continue
            if p == "Weight" and t == "00:00" and not weight_seen:
                weight_seen = True
                continue
            col, add, mul = params[p]
            x = (float(v) + add) * mul
            if not low[col] <= x <= high[col]:
                continue
            hh, mm = map(int, t.split(":"))
            key = (rid, min((hh * 60 + mm) // 60, 47), names[col])
            s, c = out.get(key, (0.0, 0))
            out[key] = (x if agg[names[col]] == "last" else s + x, c + 1)
    return {k: (s / c if agg[k[2]] == "mean" else s, c) for k, (s, c) in out.items()}


def test_random_files_against_reference(tmp_path):
    rng = np.random.default_rng(7)
    catalog = load_catalog().for_source("physionet2012")
    params = list(catalog.params("physionet2012"))
    stays = {}
    for rid in rng.choice(np.arange(100000, 200000), 25, replace=False).tolist():
        lines = descriptors(rid, weight=float(rng.choice([-1, 75.5])))
        times = np.sort(rng.integers(0, 48 * 60 + 1, rng.integers(0, 200)))
        for m in times.tolist():
            p = str(rng.choice(params))
            v = float(np.round(rng.normal(50, 60), 2))
            lines.append((f"{m // 60:02d}:{m % 60:02d}", p, v))
        stays[rid] = lines
    folder = write_set(tmp_path, "x", stays)
    p = open_processed(build(Physionet2012Source([folder]), tmp_path / "out", progress=False))
    want = reference(stays, catalog)
    got = {}
    ids = p.stays["stay_id"].to_numpy()
    rows, cols = np.nonzero(p.count[:])
    for r, c in zip(rows.tolist(), cols.tolist()):
        stay = int(np.searchsorted(p.offset, r, side="right") - 1)
        got[(int(ids[stay]), r - int(p.offset[stay]), p.features[c])] = \
            (float(p.mean[r, c]), int(p.count[r, c]))
    assert got.keys() == want.keys()
    for k, (v, c) in want.items():
        assert got[k][1] == c, k
        assert got[k][0] == pytest.approx(v, rel=1e-5, abs=1e-4), k
    assert any("no Outcomes-x.txt" in w for w in p.manifest["warnings"])
    assert set(p.stays["death_hosp"].to_pylist()) == {-1}


# ---- bad input, through the CLI


BAD_LINES = {
    "empty parameter name": ("05:00,,3", "line 8: empty parameter name"),
    "unknown parameter": ("05:00,Foo,3", "line 8: unknown parameter"),
    "non-numeric value": ("05:00,HR,abc", "line 8: value is not a number"),
    "time past 48:00": ("48:01,HR,80", "line 8: time past 48:00"),
    "time not hh:mm": ("5h,HR,80", "line 8: time is not hh:mm"),
    "wrong field count": ("05:00,HR", "line 8: not a `hh:mm,parameter,value` line"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_is_one_line_naming_file_and_line(tmp_path, case):
    line, msg = BAD_LINES[case]
    body = text(descriptors(140001)) + line + "\n"
    write_set(tmp_path / "d", "a", {140001: body}, [(140001, 1, 1, 1, -1, 0)])
    done = cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "out")
    assert done.returncode == 1 and not (tmp_path / "out").exists()
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "140001.txt: " + msg in err, err
    done = cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "out",
               "--on-bad-lines", "skip")
    assert done.returncode == 0, done.stderr
    t = open_processed(tmp_path / "out").manifest["tables"]["set-a"]
    assert sum(t["dropped"].values()) == 1


def test_file_level_faults(tmp_path):
    # a RecordID line that disagrees with the file's name
    write_set(tmp_path / "r", "a", {150001: descriptors(150002)})
    done = cli("--physionet2012", tmp_path / "r", "--out", tmp_path / "out")
    assert done.returncode == 1 and "150001.txt: line 2: RecordID 150002 disagrees" in done.stderr
    # the same RecordID in two sets
    write_set(tmp_path / "two", "a", {150003: descriptors(150003)})
    write_set(tmp_path / "two", "b", {150003: descriptors(150003)})
    done = cli("--physionet2012", tmp_path / "two", "--out", tmp_path / "out")
    assert done.returncode == 1 and "RecordID 150003 is in" in done.stderr
    # an empty set folder
    (tmp_path / "e" / "set-a").mkdir(parents=True)
    done = cli("--physionet2012", tmp_path / "e" / "set-a", "--out", tmp_path / "out")
    assert done.returncode == 1 and "empty set" in done.stderr
    # a truncated tarball
    tb = write_set(tmp_path / "t", "a", {k: [x for x in v if x[1]] for k, v in MINI.items()},
                   tarball=True)
    tb.write_bytes(tb.read_bytes()[:200])
    done = cli("--physionet2012", tb, "--out", tmp_path / "out")
    assert done.returncode == 1 and "truncated archive" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_outcomes_rows_without_files_and_files_without_rows(tmp_path):
    write_set(tmp_path / "d", "a", {160001: descriptors(160001), 160002: descriptors(160002)},
              [(160001, 5, 2, 3, -1, 1), (169999, 5, 2, 3, -1, 0)])
    done = cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    p = open_processed(tmp_path / "out")
    assert p.stays["death_hosp"].to_pylist() == [1, -1]
    t = p.manifest["tables"]["Outcomes-a"]
    assert t["rows_read"] == 2 and t["rows_kept"] == 1 and t["dropped"] == {"no_stay_file": 1}
    assert t["stays_without_row"] == 1
    assert any("169999" in w for w in p.manifest["warnings"])
    assert any("160002" in w for w in p.manifest["warnings"])


# ---- --splits


def test_splits_file(tmp_path):
    stays = {k: [x for x in v if x[1]] for k, v in MINI.items()}
    write_set(tmp_path / "d", "a", stays, MINI_OUTCOMES)
    f = tmp_path / "splits.csv"
    f.write_text("stay_id,split\n132001,train\n132002,test\n132003,val\n")
    done = cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "out", "--splits", f)
    assert done.returncode == 0, done.stderr
    p = open_processed(tmp_path / "out")
    assert p.stays["split"].to_pylist() == ["train", "test", "val"]
    assert p.manifest["split_source"] == str(f)
    for body, msg in (("stay_id,split\n132001,train\n", "2 stay_ids of the data are not in it "
                       "(132002, 132003)"),
                      ("stay_id,split\n132001,train\n132002,dev\n132003,val\n",
                       "row 2: split 'dev' is not one of train, val, test"),
                      ("id,split\n1,train\n", "needs columns stay_id (or subject_id) and split"),
                      ("stay_id,split\n132001,train\n132001,val\n", "132001 is listed twice")):
        f.write_text(body)
        done = cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "bad", "--splits", f)
        assert done.returncode == 1 and msg in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    f.write_text("subject_id,split\n132001,test\n132002,test\n132003,train\n")
    assert cli("--physionet2012", tmp_path / "d", "--out", tmp_path / "out",
               "--splits", f).returncode == 0
    assert open_processed(tmp_path / "out").stays["split"].to_pylist() == ["test", "test", "train"]


# ---- the real sets


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/physionet2012 is absent")
def test_real_sets_from_the_tarballs(tmp_path):
    done = cli("--physionet2012", SHARED, "--out", tmp_path / "out", timeout=300)
    assert done.returncode == 0, done.stderr
    p = open_processed(tmp_path / "out")
    assert p.n_stays == 8000 and p.mean.shape == (8000 * 48, 37)
    death = p.stays["death_hosp"].to_numpy()
    sets = np.array(p.stays["set"].to_pylist())
    assert int(death[sets == "a"].sum()) == 554 and int(death[sets == "b"].sum()) == 568  # NOTE.md
    los = p.stays["los_days"].to_numpy(zero_copy_only=False)
    assert int(np.isnan(los[sets == "a"]).sum()) == 60 and int(np.isnan(los[sets == "b"]).sum()) == 54
    for name in ("set-a", "set-b"):
        t = p.manifest["tables"][name]
        assert t["files"] == 4000 and t["descriptor_lines"] == 24000
        assert t["rows_read"] == t["rows_kept"] + sum(t["dropped"].values())


# ---- the literature's protocols (ehrjepa splits)


def test_protocol_split_files(tmp_path):
    rng = np.random.default_rng(3)
    for name, first in (("a", 100000), ("b", 200000)):
        rows = [(first + i, 5, 2, 3, -1, int(rng.random() < 0.15)) for i in range(400)]
        (tmp_path / f"Outcomes-{name}.txt").write_text(
            OUTCOMES_HEAD + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    env_cli = [sys.executable, "-m", "ehrjepa", "splits", "--physionet2012", str(tmp_path)]
    done = subprocess.run(env_cli + ["--protocol", "challenge", "--out", str(tmp_path / "c.csv")],
                          capture_output=True, text=True, env=ENV, cwd=REPO)
    assert done.returncode == 0, done.stderr
    import pyarrow.csv as pcsv

    c = pcsv.read_csv(tmp_path / "c.csv").to_pydict()
    split = dict(zip(c["stay_id"], c["split"]))
    assert all(split[i] == "test" for i in range(200000, 200400))
    assert sum(split[i] == "val" for i in range(100000, 100400)) == 40
    pooled = []
    for seed in range(2):
        out = tmp_path / f"p{seed}.csv"
        done = subprocess.run(env_cli + ["--protocol", "pooled", "--seed", str(seed), "--out",
                                         str(out)], capture_output=True, text=True, env=ENV,
                              cwd=REPO)
        assert done.returncode == 0, done.stderr
        pooled.append(pcsv.read_csv(out).to_pydict())
    counts = {s: pooled[0]["split"].count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 640, "val": 80, "test": 80}
    assert pooled[0]["split"] != pooled[1]["split"]  # another seed, another split
    done = subprocess.run(env_cli + ["--protocol", "hospital", "--out", str(tmp_path / "x.csv")],
                          capture_output=True, text=True, env=ENV, cwd=REPO)
    assert done.returncode == 1 and "not one of the 2012 challenge's" in done.stderr
