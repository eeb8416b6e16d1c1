"""Faults a user hit with `ehrjepa probe`, `finetune`, `embed`, `synth` and `demo` (issue 21), each
through the real CLI in a subprocess: data whose features differ from the checkpoint's, another
split seed, label fractions that fit nothing, a rerun into an earlier report, options found wrong
only after the work, --hours longer than every stay, every task skipped."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "micro.yaml"
TINY = ["data.batch_size=16", "data.val_batches=1", "train.warmup_steps=2", "train.log_every=1",
        "train.cpu_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
FAST = ["--device", "cpu", "--no-progress", "--bootstrap", "20"]


def ehrjepa(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)


def ok(done):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def one_line(done, rc=1):
    """The command failed with `rc` and said so in one line, without a traceback; returns the line."""
    assert done.returncode == rc, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    return done.stderr.strip()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """200 synthetic patients (stays of up to a few hundred hours), processed, and a 3-step micro
    run whose position table holds 1024 hours (so --hours 1000 is no fault of the model's)."""
    root = tmp_path_factory.mktemp("faults_probe")
    ok(ehrjepa("synth", "--out", root / "mimic", "--patients", 200, "--no-progress"))
    ok(ehrjepa("preprocess", "--mimic-dir", root / "mimic", "--out", root / "data", "--no-progress"))
    args = ["train", "--run-dir", root / "run", "--no-progress", "--config", MICRO, "--data", root / "data"]
    for o in TINY + ["train.max_steps=3", "data.max_hours=1024"]:
        args += ["--set", o]
    ok(ehrjepa(*args))
    return root


def run_args(setup):
    return ["--run", setup / "run", "--data", setup / "data"]


# --- item 3: the data's features and split against the checkpoint's ---------------------------

def test_swapped_features_are_refused_by_probe_finetune_and_embed(setup, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(setup / "data", swapped)
    meta = json.loads((swapped / "features.json").read_text())
    names = meta["features"]
    names[0], names[1] = names[1], names[0]  # the same count, two columns swapped
    (swapped / "features.json").write_text(json.dumps(meta))
    data = ["--run", setup / "run", "--data", swapped]
    want = f"feature 0 is '{names[1]}' in the checkpoint but '{names[0]}' in {swapped}"
    for command in (["probe", *data, "--out", tmp_path / "report", *FAST],
                    ["finetune", *data, "--task", "los_gt_3d", "--out", tmp_path / "ft", "--device", "cpu",
                     "--no-progress"],
                    ["embed", *data, "--out", tmp_path / "e.parquet", "--device", "cpu", "--no-progress"]):
        line = one_line(ehrjepa(*command))
        assert line.startswith(f"ehrjepa {command[0]}: ") and want in line, line
    assert not (tmp_path / "report" / "report.json").exists() and not (tmp_path / "ft").exists()
    assert not (tmp_path / "e.parquet").exists()


def test_data_split_with_another_seed_is_a_warning(setup, tmp_path):
    ok(ehrjepa("preprocess", "--mimic-dir", setup / "mimic", "--out", tmp_path / "seed1", "--seed", 1,
               "--no-progress"))
    embedded = ok(ehrjepa("embed", "--run", setup / "run", "--data", tmp_path / "seed1", "--out",
                          tmp_path / "e.parquet", "--device", "cpu", "--no-progress"))
    assert "ehrjepa embed: warning:" in embedded.stderr and "split with seed 1" in embedded.stderr
    probed = ok(ehrjepa("probe", "--run", setup / "run", "--data", tmp_path / "seed1", "--out", tmp_path / "r",
                        "--tasks", "los_gt_3d", "--methods", "raw_features", *FAST))
    assert "ehrjepa probe: warning:" in probed.stderr and "split with seed 1" in probed.stderr
    notes = json.loads((tmp_path / "r" / "report.json").read_text())["notes"]
    assert any("split with seed 1" in n for n in notes)


# --- items 6 and 7: the report first; a rerun replaces an earlier report whole -----------------

def test_label_fractions_that_fit_nothing_still_write_the_report(setup, tmp_path):
    done = ok(ehrjepa("probe", *run_args(setup), "--out", tmp_path / "r", "--tasks", "los_gt_3d",
                      "--label-fractions", "0.01", "--repeats", 1, *FAST))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "los_gt_3d" in report["tasks"]  # scored on the full splits, every repeat skipped at 1 %
    assert report["label_efficiency"]["los_gt_3d"]["jepa"]["0.01"]["repeats"] == 0
    assert any("label_efficiency_los_gt_3d.png not drawn" in n for n in report["notes"])
    assert "label_efficiency_los_gt_3d.png" not in report["plots"]
    assert not (tmp_path / "r" / "label_efficiency_los_gt_3d.png").exists()
    assert "not drawn" in (tmp_path / "r" / "report.md").read_text() and "report.md" in done.stdout


def test_a_rerun_removes_the_earlier_reports_plots_and_refuses_a_folder_not_ours(setup, tmp_path):
    out = tmp_path / "r"
    ok(ehrjepa("probe", *run_args(setup), "--out", out, "--tasks", "los_gt_3d", "--methods", "raw_features",
               "--label-fractions", "0.5,1", "--repeats", 1, *FAST))
    assert (out / "label_efficiency_los_gt_3d.png").exists()
    (out / "mine.txt").write_text("a user's file beside the report")
    ok(ehrjepa("probe", *run_args(setup), "--out", out, "--tasks", "los_gt_3d", "--methods", "raw_features",
               *FAST))
    report = json.loads((out / "report.json").read_text())
    assert "label_efficiency" not in report
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["mine.txt", "report.json", "report.md", *report["plots"]]), files
    # a folder with files of someone else's and no report of ours: refused before any work
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    (foreign / "pca.png").write_text("a user's picture")
    line = one_line(ehrjepa("probe", *run_args(setup), "--out", foreign, *FAST))
    assert f"{foreign} is not empty and holds no report of `ehrjepa probe`" in line
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "pca.png"]
    assert (foreign / "pca.png").read_text() == "a user's picture"


# --- items 10 and 13: options checked before any work -----------------------------------------

def test_synth_and_demo_reject_bad_options_in_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for args, want in ((["--patients", 0], "--patients must be >= 1, not 0"),
                       (["--patients", -5], "--patients must be >= 1, not -5"),
                       (["--patients", 0, "--format", "meds"], "--patients must be >= 1, not 0")):
        assert want in one_line(ehrjepa("synth", "--out", tmp_path / "s", *args), rc=2)
    assert f"--out {a_file} is a file" in one_line(ehrjepa("synth", "--out", a_file, "--patients", 3), rc=2)
    assert "is a file, not a folder" in one_line(ehrjepa("synth", "--out", a_file / "x", "--patients", 3), rc=2)
    assert not (tmp_path / "s").exists() and a_file.read_text() == "x"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  max_steps: many\n")
    for args, want in ((["--patients", 0], "--patients must be >= 1, not 0"),
                       (["--steps", 0], "--steps must be >= 1, not 0"),
                       (["--config", tmp_path / "none.yaml"], "none.yaml"),
                       (["--config", bad_yaml], "max_steps")):
        line = one_line(ehrjepa("demo", "--out", tmp_path / "demo", *args), rc=2)
        assert line.startswith("ehrjepa demo: ") and want in line, line
    assert not (tmp_path / "demo").exists()  # found before synth ran, not at stage 3


def test_probe_and_finetune_options_are_checked_before_the_run_is_read(tmp_path):
    nothing = ["--run", tmp_path / "no_run", "--data", tmp_path / "no_data", "--out", tmp_path / "out"]
    for args, want in ((["--bootstrap", 0], "--bootstrap must be >= 1, not 0"),
                       (["--batch-size", 0], "--batch-size must be >= 1, not 0"),
                       (["--tasks", "los_gt_3d", "--label-fractions", "0.5", "--label-tasks", "mortality_hosp"],
                        "--label-tasks: mortality_hosp is not among the probed tasks"),
                       (["--label-tasks", "los_gt_3d"], "give --label-fractions too")):
        line = one_line(ehrjepa("probe", *nothing, *args), rc=2)
        assert line.startswith("ehrjepa probe: ") and want in line, line
    for args, want in ((["--steps", 0], "--steps must be >= 1, not 0"),
                       (["--min-steps", 0], "--min-steps must be >= 1, not 0"),
                       (["--batch-size", 0], "--batch-size must be >= 1, not 0"),
                       (["--eval-every", 0], "--eval-every must be >= 1"),
                       (["--patience", 0], "--patience must be >= 1"),
                       (["--epochs", 0], "--epochs must be a number > 0"),
                       (["--epochs", "inf"], "--epochs must be a number > 0"),
                       (["--lr", "nan"], "--lr must be a number > 0")):
        line = one_line(ehrjepa("finetune", *nothing, "--task", "los_gt_3d", *args), rc=2)
        assert want in line, line
        for internal in ("max_steps", "min_steps", "batch_size", "eval_every", "max_epochs"):
            assert internal not in line, line
    assert not (tmp_path / "out").exists()


def test_a_label_task_the_data_lacks_is_refused_before_the_embedding(setup, tmp_path):
    line = one_line(ehrjepa("probe", *run_args(setup), "--out", tmp_path / "r", "--label-fractions", "0.5",
                            "--label-tasks", "phenotype_nonesuch", *FAST))
    assert "--label-tasks" in line and "phenotype_nonesuch" in line, line
    assert not (tmp_path / "r" / "report.json").exists()


# --- item 14: --hours longer than every stay --------------------------------------------------

def test_hours_longer_than_every_stay_is_an_error(setup, tmp_path):
    import pyarrow.parquet as pq

    longest = max(pq.read_table(setup / "data" / "stays.parquet", columns=["n_hours"]).column(0).to_pylist())
    hours = 1000
    assert longest < hours <= 1024
    want = f"no stay in {setup / 'data'} has {hours} hours (the longest has {longest})"
    for command in (["probe", *run_args(setup), "--out", tmp_path / "r", "--hours", hours, *FAST],
                    ["embed", *run_args(setup), "--out", tmp_path / "e.parquet", "--hours", hours, "--device", "cpu"],
                    ["finetune", *run_args(setup), "--out", tmp_path / "ft", "--task", "los_gt_3d", "--hours", hours,
                     "--device", "cpu"]):
        line = one_line(ehrjepa(*command))
        assert want in line, line
    assert not (tmp_path / "e.parquet").exists() and not (tmp_path / "r" / "report.json").exists()


# --- item 16: every task skipped ---------------------------------------------------------------

def test_every_task_skipped_prints_the_reason_not_an_empty_table(setup, tmp_path):
    # few stays have 300 hours: too few in a class for every task
    done = ok(ehrjepa("probe", *run_args(setup), "--out", tmp_path / "r", "--hours", 300, "--label-fractions",
                      "0.5,1", "--repeats", 1, "--methods", "raw_features", *FAST))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["tasks"] == {} and report["skipped"]
    assert "No results: all" in done.stdout and "No task was refit at the label fractions" in done.stdout
    assert "| task | method |  |" not in done.stdout and "| task | method | AUROC" not in done.stdout
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No results: all" in md and "| task | method |" not in md


def test_a_demo_with_too_few_patients_says_how_many_to_use(tmp_path):
    done = ok(ehrjepa("demo", "--out", tmp_path / "demo", "--patients", 50, "--steps", 2))
    assert "No results: all" in done.stdout and "| task | method |  |" not in done.stdout
    assert "--patients 300 or more" in done.stdout
