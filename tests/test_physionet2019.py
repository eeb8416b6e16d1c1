"""`ehrjepa preprocess --physionet2019`: a hand-built mini set of .psv files against its
answers (hourly values, NaN, conversions, ranges, SepsisLabel runs, a stay labelled from its
first row, a stay starting past ICULOS 1), folder / tar.gz / zip / two PATHs alike, the reader
against a plain-Python reference on random files, the hourly-label format, each bad-input case
through the real CLI, and the real training set A where ../shared/physionet2019 is present."""
import io
import json
import math
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ehrjepa.data.build import build
from ehrjepa.data.catalog import load_catalog
from ehrjepa.data.physionet2019 import COLUMNS, MEASURED, Physionet2019Source
from ehrjepa.data.processed import open_processed

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "physionet2019"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
HEADER = "|".join(COLUMNS)


def row(iculos, label=0, age=60.0, gender=1, unit1=1, unit2=0, hosp=-2.5, **values):
    """One .psv row: the given columns' values, NaN elsewhere."""
    cells = dict(values, Age=age, Gender=gender, Unit1=unit1, Unit2=unit2, HospAdmTime=hosp,
                 ICULOS=iculos, SepsisLabel=label)
    return "|".join("NaN" if cells.get(c) is None or (isinstance(cells.get(c), float)
                                                      and math.isnan(cells[c]))
                    else str(cells[c]) for c in COLUMNS)


def psv(rows):
    return HEADER + "\n" + "".join(r + "\n" for r in rows)


# the mini set: {stay id: file text}
MINI = {
    # ICULOS 1..3, medical ICU, male; HR 80, -, 90; FiO2 0.5 (-> 50 %) at hour 1
    1: psv([row(1, HR=80, Temp=37.5), row(2, FiO2=0.5, pH=7.31), row(3, HR=90.5)]),
    # starts at ICULOS 5; labelled from hour 2: onset hour 8; HR 400 and FiO2 0.1 (10 %) out of
    # range; surgical ICU, female
    2: psv([row(5, HR=70, unit1=0, unit2=1, gender=0, age=45.5, hosp=-100),
            row(6, HR=400, FiO2=0.1, unit1=0, unit2=1, gender=0, age=45.5, hosp=-100),
            row(7, label=1, Resp=22, unit1=0, unit2=1, gender=0, age=45.5, hosp=-100),
            row(8, label=1, Platelets=150, unit1=0, unit2=1, gender=0, age=45.5, hosp=-100)]),
    # labelled from its first row (onset hour 6); unit unknown
    10: psv([row(1, label=1, HR=100, unit1=None, unit2=None, gender=0, hosp=None),
             row(2, label=1, HR=101, unit1=None, unit2=None, gender=0, hosp=None)]),
}


def write_folder(root: Path, files: dict, names=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for sid, text in files.items():
        (root / (names or {}).get(sid, f"p{sid:06d}.psv")).write_bytes(
            text if isinstance(text, bytes) else text.encode())
    return root


def write_tar(path: Path, files: dict, folder="training_setA") -> Path:
    mode = "w:gz" if path.name.endswith("gz") else "w"
    with tarfile.open(path, mode) as tar:
        for sid, text in files.items():
            data = text if isinstance(text, bytes) else text.encode()
            info = tarfile.TarInfo(f"{folder}/p{sid:06d}.psv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for sid, text in files.items():
            z.writestr(f"training/p{sid:06d}.psv", text)
    return path


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "ehrjepa", "preprocess", "--no-progress",
                           *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=REPO)


def run(paths, out, **kw):
    return open_processed(build(Physionet2019Source([str(p) for p in paths], **kw), out,
                                progress=False))


def col(data, name):
    return data.stays.column(name).to_pylist()


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    folder = write_folder(root / "set", MINI)
    return run([folder], root / "out")


# -------------------------------------------------------------------------------------------------
# the mini set


def test_mini_stays(mini):
    assert col(mini, "stay_id") == [1, 2, 10]
    assert col(mini, "subject_id") == [1, 2, 10]
    assert col(mini, "hadm_id") == [None, None, None]
    assert col(mini, "n_hours") == [3, 4, 2]
    assert col(mini, "offset") == [0, 3, 7]
    assert col(mini, "iculos_first") == [1, 5, 1]
    # intime: the first row's ICULOS - 1 hours after 1970-01-01; outtime n_rows hours later
    intime = mini.stays.column("intime").cast("int64").to_pylist()
    outtime = mini.stays.column("outtime").cast("int64").to_pylist()
    assert intime == [0, 4 * 3600, 0] and outtime == [3 * 3600, 8 * 3600, 2 * 3600]
    assert col(mini, "los_days") == pytest.approx([3 / 24, 8 / 24, 2 / 24])
    assert col(mini, "age") == [60.0, 45.5, 60.0]
    assert col(mini, "sex") == [1.0, 0.0, 0.0]
    assert col(mini, "icu_type") == [3.0, 4.0, None]
    assert col(mini, "hosp_adm_hours") == [-2.5, -100.0, None]
    assert col(mini, "death_hosp") == [-1, -1, -1]


def test_mini_sepsis_labels(mini):
    assert mini.hour_label_names == ["sepsis_label"]
    assert mini.hour_labels.dtype == np.int8 and mini.hour_labels.shape == (9, 1)
    assert mini.hour_label("sepsis_label").tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert col(mini, "sepsis") == [0, 1, 1]
    # the first labelled hour + 6 (the challenge labels from 6 h before the onset)
    assert col(mini, "sepsis_onset_hour") == [None, 8.0, 6.0]
    assert mini.manifest["sepsis"]["labelled_from_first_hour"] == 1
    assert mini.manifest["hour_labels"] == {"sepsis_label": {"1": 4, "0": 5, "-1": 0}}
    assert "sepsis_label" not in mini.features and "sepsis" not in mini.features
    with pytest.raises(KeyError, match="no hourly label 'death'"):
        mini.hour_label("death")


def test_mini_values(mini):
    f = {name: k for k, name in enumerate(mini.features)}
    mean, count = np.asarray(mini.mean), np.asarray(mini.count)
    hr = f["heart_rate"]
    assert mean[[0, 2, 3, 7, 8], hr].tolist() == [80.0, 90.5, 70.0, 100.0, 101.0]
    assert np.isnan(mean[[1, 4, 5, 6], hr]).all()  # NaN, and 400 out of range at row 4
    assert count[:, hr].tolist() == [1, 0, 1, 1, 0, 0, 0, 1, 1]
    assert mean[1, f["fio2"]] == pytest.approx(50.0)  # fraction -> percent
    assert np.isnan(mean[4, f["fio2"]])  # 0.1 -> 10 %: below the valid range
    assert mean[0, f["temperature"]] == pytest.approx(37.5)
    assert mean[1, f["ph"]] == pytest.approx(7.31)
    assert mean[5, f["resp_rate"]] == 22.0 and mean[6, f["platelets"]] == 150.0
    assert int(count.sum()) == 10
    m = mini.manifest
    assert m["source"] == "physionet2019"
    t = m["total"]
    assert (t["rows_read"], t["rows_kept"], t["files"]) == (9, 9, 3)
    assert t["values"]["rows_read"] == 12 and t["values"]["rows_kept"] == 10
    assert t["values"]["dropped"]["out_of_range"] == 2
    assert m["tables"]["set"]["values"]["rows_kept"] == 10
    assert m["kept_by_feature"]["heart_rate"] == 5


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip", "two_paths"])
def test_archives_and_paths_agree(mini, tmp_path, kind):
    """A tar.gz, a tar, a zip, and the stays spread over two folders (stays 1 and 10 in one, 2
    in the other: their rows interleave) give the folder's output."""
    if kind == "zip":
        paths = [write_zip(tmp_path / "set.zip", MINI)]
    elif kind == "two_paths":
        paths = [write_folder(tmp_path / "a", {1: MINI[1], 10: MINI[10]}),
                 write_folder(tmp_path / "b", {2: MINI[2]})]
    else:
        paths = [write_tar(tmp_path / f"set.{kind}", MINI)]
    got = run(paths, tmp_path / "out")
    assert got.stays.drop_columns([]).equals(mini.stays)
    np.testing.assert_array_equal(got.mean, mini.mean)
    np.testing.assert_array_equal(got.count, mini.count)
    np.testing.assert_array_equal(got.hour_labels, mini.hour_labels)
    assert got.manifest["total"]["files"] == 3


def test_other_files_passed_over(tmp_path):
    root = write_folder(tmp_path / "set", MINI)
    (root / "README.txt").write_text("not a stay")
    (root / "._p000001.psv").write_bytes(b"\x00\x05")  # a macOS companion
    data = run([root], tmp_path / "out")
    assert data.n_stays == 3
    assert data.manifest["total"]["other_files"] == 2


# -------------------------------------------------------------------------------------------------
# the hourly-label format


def test_open_processed_without_or_with_damaged_hour_labels(mini, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(mini.path, out)
    meta = json.loads((out / "features.json").read_text())
    (out / "hour_labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="hour_labels.npy not found"):
        open_processed(out)
    np.save(out / "hour_labels.npy", np.zeros((5, 1), np.int8))
    with pytest.raises(ValueError, match=r"expected int8 \(9, 1\)"):
        open_processed(out)
    (out / "hour_labels.npy").unlink()
    del meta["hour_labels"]
    (out / "features.json").write_text(json.dumps(meta))
    data = open_processed(out)  # a folder of a source without hourly labels
    assert data.hour_labels is None and data.hour_label_names == []


# -------------------------------------------------------------------------------------------------
# the reader against a plain-Python reference


def reference(files: dict, catalog) -> dict:
    """Plain Python: per stay (in id order) its hours' converted, in-range values per feature
    and its labels, from the file texts."""
    params = catalog.params("physionet2019")
    low, high = catalog.valid_ranges()
    out = {}
    for sid in sorted(files):
        lines = files[sid].splitlines()
        head = lines[0].split("|")
        hours = []
        for line in lines[1:]:
            cells = dict(zip(head, line.split("|")))
            values = {}
            for name, (k, add, mul) in params.items():
                x = float(cells[name])
                if math.isnan(x):
                    continue
                v = (x + add) * mul
                if low[k] <= v <= high[k]:
                    values[k] = v
            hours.append((values, int(float(cells["SepsisLabel"]))))
        out[sid] = hours
    return out


def random_files(rng, n_stays: int) -> dict:
    files = {}
    for sid in rng.choice(10**6, n_stays, replace=False).tolist():
        n = int(rng.integers(1, 30))
        first = int(rng.integers(1, 5))
        onset = int(rng.integers(0, n + 3)) if rng.random() < 0.4 else n + 99
        rows = []
        for h in range(n):
            values = {}
            for name in MEASURED:
                if rng.random() < 0.3:
                    scale = 1.0 if name == "FiO2" else 100.0
                    v = round(float(rng.normal(0.5, 0.3) * scale * (3 if rng.random() < 0.05
                                                                    else 1)), 3)
                    values[name] = v
            rows.append(row(first + h, label=int(h >= onset), age=round(float(rng.uniform(18, 90)), 2),
                            **values))
        files[sid] = psv(rows)
    return files


@pytest.mark.parametrize("seed,chunked", [(0, False), (1, True)])
def test_against_reference(tmp_path, seed, chunked, monkeypatch):
    """chunked: the files parsed and folded in two chunks side by side (as for real sets)."""
    import ehrjepa.data.physionet2019 as source

    monkeypatch.setattr(source, "CHUNK_MIN_FILES", 2 if chunked else 10**9)
    rng = np.random.default_rng(seed)
    files = random_files(rng, 60)
    catalog = load_catalog().for_source("physionet2019")
    data = run([write_tar(tmp_path / "r.tar.gz", files)], tmp_path / "out")
    ref = reference(files, catalog)
    assert col(data, "stay_id") == sorted(files)
    offset, n_hours = col(data, "offset"), col(data, "n_hours")
    mean, count = np.asarray(data.mean), np.asarray(data.count)
    labels = data.hour_label("sepsis_label")
    for i, sid in enumerate(sorted(files)):
        assert n_hours[i] == len(ref[sid])
        for h, (values, label) in enumerate(ref[sid]):
            r = offset[i] + h
            assert labels[r] == label
            want = np.full(len(catalog.names), np.nan, np.float32)
            for k, v in values.items():
                want[k] = v
            np.testing.assert_array_equal(mean[r], want)
            np.testing.assert_array_equal(count[r], ~np.isnan(want))
    total = data.manifest["total"]["values"]
    assert total["rows_kept"] == int(count.sum())


# -------------------------------------------------------------------------------------------------
# bad input through the CLI: one line naming the file and line, nothing left behind


def bad_case(tmp_path, files: dict, names=None):
    root = write_folder(tmp_path / "set", files, names)
    return root


def fail(tmp_path, *paths, skip=False):
    out = tmp_path / "out"
    r = cli("--physionet2019", *paths, "--out", out, *(["--on-bad-lines", "skip"] if skip else []))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left
    return lines[0]


BAD_ROWS = {
    "fields": (lambda: psv([row(1), row(2)[:-2], row(3)]), "p000007.psv: line 3: 40 fields, expected 41"),
    "number": (lambda: psv([row(1), row(2), row(3, HR="8O")]),
               "p000007.psv: line 4: column HR is '8O', not a number"),
    "iculos": (lambda: psv([row(1), row(2), row(4)]),
               "p000007.psv: line 4: ICULOS '4' is not one more than the row before's"),
    "label": (lambda: psv([row(1), row(2, label=2)]),
              "p000007.psv: line 3: SepsisLabel '2' is not 0 or 1"),
    "label_nan": (lambda: psv([row(1, label=None)]),
                  "p000007.psv: line 2: SepsisLabel 'NaN' is not 0 or 1"),
}


def test_first_error_of_two_chunks(tmp_path, monkeypatch):
    """Bad files in both chunks: the error of the first (in stay order) is the one raised."""
    import ehrjepa.data.physionet2019 as source

    monkeypatch.setattr(source, "CHUNK_MIN_FILES", 2)
    files = {k: MINI[1] for k in range(1, 9)}
    files[3] = psv([row(1), row(2, label=5)])
    files[7] = psv([row(1, HR="x")])
    root = bad_case(tmp_path, files)
    with pytest.raises(ValueError, match=r"p000003.psv: line 3: SepsisLabel '5'"):
        run([root], tmp_path / "out")


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row(tmp_path, case):
    text, message = BAD_ROWS[case]
    root = bad_case(tmp_path, {1: MINI[1], 7: text()})
    line = fail(tmp_path, root)
    assert message in line and str(root) in line


def test_bad_rows_skipped_and_counted(tmp_path):
    """--on-bad-lines skip: each bad row is counted by reason and kept as an empty hour with
    label -1; the good rows around it keep their hours."""
    text = psv([row(1, HR=80), row(2, HR=81)[:-2], row(3, HR="x"), row(7, HR=83),
                row(5, label=3, HR=84), row(6, HR=85)])
    root = bad_case(tmp_path, {1: MINI[1], 7: text})
    r = cli("--physionet2019", root, "--out", tmp_path / "out", "--on-bad-lines", "skip")
    assert r.returncode == 0, r.stderr
    data = open_processed(tmp_path / "out")
    t = data.manifest["total"]
    assert (t["rows_read"], t["rows_kept"]) == (9, 5)
    assert t["dropped"] == {"bad_line": 1, "non_numeric": 1, "bad_iculos": 1, "bad_label": 1}
    hr = data.features.index("heart_rate")
    rows = slice(3, 9)
    assert np.asarray(data.mean)[rows, hr].tolist()[0] == 80.0
    assert np.isnan(np.asarray(data.mean)[rows, hr][1:5]).all()
    assert np.asarray(data.mean)[rows, hr][5] == 85.0
    assert data.hour_label("sepsis_label")[rows].tolist() == [0, -1, -1, -1, -1, 0]
    assert any("4 rows skipped" in w for w in data.manifest["warnings"])


def test_header_differs(tmp_path):
    text = MINI[1].replace("|Temp|", "|Tmp|", 1)
    root = bad_case(tmp_path, {2: MINI[2], 7: text})
    line = fail(tmp_path, root)
    assert "p000007.psv: line 1: the header differs from the challenge's 41 columns " \
           "(column 3 is 'Tmp', expected 'Temp')" in line
    # not skipped with --on-bad-lines skip either
    assert "header differs" in fail(tmp_path, root, skip=True)


@pytest.mark.parametrize("content", [b"", HEADER.encode() + b"\n"])
def test_empty_file(tmp_path, content):
    root = bad_case(tmp_path, {1: MINI[1], 7: content})
    line = fail(tmp_path, root, skip=True)
    assert "p000007.psv: empty file (no data rows" in line


def test_two_files_for_one_stay(tmp_path):
    root = bad_case(tmp_path, {1: MINI[1], 2: MINI[2]})
    (root / "sub").mkdir()
    (root / "sub" / "p1.psv").write_text(MINI[1])
    line = fail(tmp_path, root)
    assert line.startswith("ehrjepa preprocess: stay 1 has two files: ")
    assert "p000001.psv" in line and "sub/p1.psv" in line
    # across two PATHs
    (root / "sub" / "p1.psv").unlink()
    other = write_folder(tmp_path / "other", {1: MINI[1]})
    line = fail(tmp_path, root, other)
    assert "stay 1 has two files" in line and str(other) in line


def test_stay_file_name(tmp_path):
    root = bad_case(tmp_path, {1: MINI[1], 2: MINI[2]}, names={2: "patient2.psv"})
    assert "patient2.psv: not a stay file of the challenge" in fail(tmp_path, root)


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_truncated_archive(tmp_path, kind):
    files = {k: MINI[1] for k in range(1, 40)}
    path = (write_zip(tmp_path / "a.zip", files) if kind == "zip"
            else write_tar(tmp_path / f"a.{kind}", files))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    line = fail(tmp_path, path)
    assert str(path) in line and ("truncated" in line or "corrupt" in line)


def test_not_an_input(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n")
    assert "not a folder of .psv files" in fail(tmp_path, p)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .psv files" in fail(tmp_path, empty)


# -------------------------------------------------------------------------------------------------
# the real training set A


@pytest.mark.skipif(not (SHARED / "training_setA.tar.gz").exists(),
                    reason="../shared/physionet2019 is absent")
def test_real_training_set_a(tmp_path):
    r = cli("--physionet2019", SHARED / "training_setA.tar.gz", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    data = open_processed(tmp_path / "out")
    m = data.manifest
    assert data.n_stays == 20336 and m["total_hours"] == 790215  # NOTE.md's counts
    assert m["labels"]["sepsis"]["1"] == 1790
    assert m["sepsis"] == {"stays": 1790, "labelled_hours": 17136, "labelled_from_first_hour": 203,
                           "onset_hour": m["sepsis"]["onset_hour"]}
    assert m["total"]["rows_read"] == m["total"]["rows_kept"] == 790215
    n_hours = data.n_hours
    assert (n_hours.min(), int(np.median(n_hours)), n_hours.max()) == (8, 39, 336)
    onset = np.array(col(data, "sepsis_onset_hour"), dtype=float)
    assert np.nanmedian(onset) == 28 + 6  # NOTE.md: the first labelled hour's median is 28
    # FiO2 is a fraction in the files: in percent here, mostly 30-60 %
    fio2 = np.asarray(data.mean[:, data.features.index("fio2")])
    assert 40 <= np.nanmedian(fio2) <= 60
    assert set(np.unique(np.array(col(data, "icu_type"), dtype=float)[
        ~np.isnan(np.array(col(data, "icu_type"), dtype=float))])) == {3.0, 4.0}
