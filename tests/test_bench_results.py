"""bench/results.py appends complete rows to the one results file; bench/render.py rebuilds the
RESULTS.md tables from it, and the committed RESULTS.md is what the committed CSV renders to."""
import pytest

from bench import render, results


def test_append_rows_fills_provenance_and_rejects_unknown_columns(tmp_path):
    path = tmp_path / "r.csv"
    results.append_rows([{"benchmark": "kernels", "case": "c", "tool": "ours", "wall_s": 0.5}],
                        path, command="python -m bench kernels")
    results.append_rows([{"benchmark": "kernels", "case": "c", "tool": "flex",
                          "status": "unavailable: no backward on CPU"}], path)
    first, second = results.read_rows(path)
    assert first["wall_s"] == 0.5 and first["status"] == "ok" and first["machine"]
    assert "torch" in first["versions"] and first["date"][:2] == "20"
    assert first["command"] == "python -m bench kernels"
    assert second["wall_s"] is None and second["status"].startswith("unavailable")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['walltime'\]"):
        results.append_rows([{"benchmark": "kernels", "walltime": 1.0}], path)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: header"):
        results.append_rows([{"benchmark": "x"}], other)


def test_quick_runs_record_only_when_told_where(tmp_path, monkeypatch):
    monkeypatch.delenv("EHRJEPA_RESULTS", raising=False)
    assert results.destination(None, quick=True) is None
    assert results.destination(None, quick=False) == results.RESULTS_CSV
    assert results.destination(tmp_path / "x.csv", quick=True) == tmp_path / "x.csv"
    monkeypatch.setenv("EHRJEPA_RESULTS", str(tmp_path / "env.csv"))
    assert results.destination(None, quick=True) == tmp_path / "env.csv"


def test_render_takes_the_newest_row_and_marks_interpreter_and_unavailable(tmp_path):
    csv, md = tmp_path / "r.csv", tmp_path / "R.md"
    row = {"benchmark": "kernels", "case": "ema tiny", "shape": "1k", "machine": "box"}
    results.append_rows([{**row, "tool": "lerp", "wall_s": 2e-3, "value": 9.0, "unit": "GB/s"},
                         {**row, "tool": "ours", "wall_s": 5.0, "status": "interpreter"},
                         {**row, "tool": "flex", "status": "unavailable: why"},
                         {**row, "tool": "lerp", "wall_s": 1e-3, "value": 12.0, "unit": "GB/s"}],
                        csv)
    md.write_text("prose\n<!-- results:kernels -->\nold\n<!-- /results:kernels -->\nmore prose\n")
    assert render.main(["--csv", str(csv), "--md", str(md), "--check"]) == 1
    assert render.main(["--csv", str(csv), "--md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("prose\n") and text.endswith("more prose\n") and "old" not in text
    assert "| ema tiny | 1k | 1.00 ms (12 GB/s) | 5.00 s (interpreter) | unavailable |" in text
    assert render.main(["--csv", str(csv), "--md", str(md), "--check"]) == 0


def test_committed_results_md_is_rendered_from_results_csv():
    assert render.main(["--check"]) == 0, "run python -m bench render"
