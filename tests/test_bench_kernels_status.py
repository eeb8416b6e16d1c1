"""`python -m bench kernels` runs the rivals it can and says why the others did not run: with Triton
hidden, ours is "unavailable" and the table still prints; with Triton on CPU, ours is timed in the
interpreter and labelled as such, in the table, the JSON and the results rows."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HIDE_TRITON = "import sys; sys.modules['triton'] = None; "


def run_bench(tmp_path, prelude=""):
    out, csv_path = tmp_path / "kernels.json", tmp_path / "results.csv"
    code = (prelude + "from bench.__main__ import main; "
            f"sys.exit(main(['kernels', '--quick', '--only', 'ema', '--rep', '1', "
            f"'--json', {str(out)!r}, '--results', {str(csv_path)!r}]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", "import sys; " + code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(csv_path, newline="") as f:
        # the main rows, by tool (the host-cost rows of the same tools have their own case)
        rows = {r["tool"]: r for r in csv.DictReader(f) if "," not in r["case"]}
    return json.loads(out.read_text()), proc.stdout, rows


def test_without_triton_the_rivals_run_and_ours_is_unavailable(tmp_path):
    res, table, rows = run_bench(tmp_path, HIDE_TRITON)
    (ema,) = res["ema"]
    assert res["triton"] == "absent"
    assert ema["status"]["ours"] == "unavailable: triton is not installed"
    assert "ours_us" not in ema and ema["foreach_lerp_us"] > 0
    assert "ours: unavailable: triton is not installed" in table
    assert rows["ours"]["status"].startswith("unavailable") and rows["ours"]["wall_s"] == ""
    assert rows["foreach_lerp"]["status"] == "ok" and float(rows["foreach_lerp"]["wall_s"]) > 0


def test_interpreter_timings_are_labelled(tmp_path):
    pytest.importorskip("triton")
    res, table, rows = run_bench(tmp_path)
    (ema,) = res["ema"]
    assert ema["status"]["ours"] == "interpreter" and ema["ours_us"] > 0
    assert "ours_GBps" not in ema  # a rate from the interpreter would read as a speed
    assert "(interpreter)" in table and "not how fast" in table
    assert rows["ours"]["status"] == "interpreter" and rows["ours"]["value"] == ""
    assert ema["max_ulp_vs_foreach_lerp"] <= 1
    # the device-time (CUDA graph) and host columns are CUDA-only
    assert "graph_status" not in ema and "CUDA graph" not in table
    assert not any("CUDA graph" in line for line in (tmp_path / "results.csv").open())


def test_cuda_graph_and_host_columns_render_and_record():
    """A CUDA row's device time in a graph and host issue time reach the table and the rows
    (fed by hand: there is no GPU here); a variant whose capture failed says so."""
    from bench import kernels
    row = {"model": "m", "params_M": 1.0, "max_ulp_vs_foreach_lerp": 0,
           "status": dict.fromkeys(kernels.EMA_COLUMNS, "ok"),
           "graph_status": {**dict.fromkeys(kernels.EMA_COLUMNS, "ok"),
                            "loop": "failed: RuntimeError: capture"}}
    for i, name in enumerate(kernels.EMA_COLUMNS):
        row[name + "_us"], row[name + "_GBps"] = 100.0 + i, 120.0
        row[name + "_host_us"] = 7.0 + i
        if name != "loop":
            row[name + "_graph_us"], row[name + "_graph_GBps"] = 50.0 + i, 240.0
    row["host_cost_us"] = {"ours": 60.0, "ours_plan": 2.5}
    table = kernels.markdown({"device": "d", "torch": "t", "triton": "x", "date": "today",
                              "ema": [row]})
    graph_part = table.split("inside a CUDA graph")[1]
    assert "| m | failed; host 7.0 | 51.0 (240.0); host 8.0 |" in graph_part
    assert "loop: failed: RuntimeError: capture" in graph_part
    assert "ours 60.0 us, ours_plan 2.5 us" in table
    rows = {(r["case"], r["tool"]): r for r in kernels.result_rows("ema", row)}
    graph = "ema m, in a CUDA graph"
    assert rows[graph, "ours"]["wall_s"] == pytest.approx(54e-6)
    assert "host issue time 11.0 us" in rows[graph, "ours"]["note"]
    assert rows[graph, "loop"]["status"].startswith("failed")
    assert rows["ema m", "ours"]["wall_s"] == pytest.approx(104e-6)
    assert rows["ema m, host Python per call", "ours_plan"]["wall_s"] == pytest.approx(2.5e-6)

