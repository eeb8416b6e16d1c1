"""`ehrjepa demo` end to end, shrunk: every stage runs through the CLI and leaves its outputs."""
import json
import re

from ehrjepa.cli import main


def test_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--patients", "120", "--steps", "20", "--seed", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    for stage in ("1/4 synth", "2/4 preprocess", "3/4 train", "4/4 probe", "demo done"):
        assert stage in printed
    # preprocessing's counts are printed once (the demo adds only what they do not say)
    assert len(re.findall(r"chartevents +read", printed)) == 1
    assert (out / "mimic" / "icu" / "chartevents.csv.gz").exists()
    manifest = json.loads((out / "processed" / "manifest.json").read_text())
    for acc in manifest["tables"].values():
        assert acc["rows_kept"] + sum(acc["dropped"].values()) == acc["rows_read"]
    assert (out / "run" / "checkpoints" / "last.pt").exists()
    report = json.loads((out / "probe" / "report.json").read_text())
    from ehrjepa.demo import DEMO_LABEL_TASKS, DEMO_TASKS

    ran = [t for t in DEMO_TASKS if t in report["tasks"]]
    skipped = set(report.get("skipped", {}))
    assert set(ran) | skipped == set(DEMO_TASKS)  # every task ran or says why not
    for task in ran:
        assert set(report["tasks"][task]) == {"jepa", "random_init", "raw_features", "raw_gbdt"}
    # the short label-efficiency table: printed, and in the report for the tasks that could be fit
    assert "AUROC at 0.05" in printed
    assert set(report["label_efficiency"]) <= set(DEMO_LABEL_TASKS)


def test_demo_twice_starts_fresh_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--patients", "60", "--steps", "4", "--seed", "1", "--skip-probe"]
    assert main(args) == 0
    (out / "run" / "stale.txt").write_text("from the first run")
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "starting fresh" in printed
    assert not (out / "run" / "stale.txt").exists()
    assert (out / "run" / "checkpoints" / "last.pt").exists()
    # the folder list is aligned: every description starts in the same column
    listing = [line for line in printed.splitlines() if line.startswith(f"  {out}")]
    assert len(listing) == 3
    assert len({re.match(r"  \S+\s+", line).end() for line in listing}) == 1


def test_demo_never_touches_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    assert main(["demo", "--out", str(out), "--patients", "60", "--steps", "4"]) == 2
    assert "not made by `ehrjepa demo`" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "a user's file"


def test_version_and_the_demo_help_give_what_a_new_user_asks(capsys):
    import pytest

    import ehrjepa

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"ehrjepa {ehrjepa.__version__}"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option in ("--out", "--patients", "--steps", "--seed", "--config"):
        described = help_text.split(option, 2)[-1].split(" --")[0]
        assert "default" in described, f"{option}: no default in its help"
