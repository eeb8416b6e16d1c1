"""The one results file every benchmark appends to: `bench/results.csv`.

Each benchmark run adds one row per measured thing (a tool on a case), with where and when it was
measured, so numbers from different sessions and machines sit in one table and
`python -m bench render` can rebuild the tables of `bench/RESULTS.md` from it. Rows are appended,
never rewritten: a run that is killed half-way keeps the rows it has written.

    from bench.results import append_rows
    append_rows([{"benchmark": "preprocess", "case": "csv 5M", "shape": "5,000,000 rows",
                  "tool": "duckdb", "wall_s": 2.40, "cpu_s": 3.9, "rss_mb": 576}],
                command="python -m bench preprocess --rows 5000000", packages=("duckdb",))

Columns (empty where they do not apply):
- benchmark, case, shape, tool: what ran (shape: rows, or B x T and the like);
- wall_s: the timed wall time in seconds (a whole process for preprocess, one step or one call
  for the kernels and the train step); cpu_s, rss_mb: CPU time and peak RSS where measured;
- value, unit: a derived figure the table shows (seq/s, GB/s, TFLOP/s);
- status: "ok", "interpreter" (Triton's CPU interpreter: runs, but is no speed), or
  "unavailable: REASON" / "failed: REASON" (then no time);
- machine, versions, date: filled in here unless given; command, note: provenance.
`EHRJEPA_RESULTS=PATH` sends the rows to another file (tests do, so they never touch this one).
"""
from __future__ import annotations

import csv
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS_CSV = Path(__file__).resolve().parent / "results.csv"
COLUMNS = ("benchmark", "case", "shape", "tool", "wall_s", "cpu_s", "rss_mb", "value", "unit",
           "status", "machine", "versions", "date", "command", "note")
NUMERIC = ("wall_s", "cpu_s", "rss_mb", "value")
BASE_PACKAGES = ("torch", "triton")


def results_path(path: str | Path | None = None) -> Path:
    """The file rows go to: `path`, else $EHRJEPA_RESULTS, else bench/results.csv."""
    return Path(path or os.environ.get("EHRJEPA_RESULTS") or RESULTS_CSV)


def add_option(parser) -> None:
    """The --results option every benchmark takes."""
    parser.add_argument("--results", metavar="CSV", default=None,
                        help="append the measured rows to this CSV (default: $EHRJEPA_RESULTS, "
                             "else bench/results.csv; --quick runs record only when given one)")


def destination(path=None, quick=False) -> Path | None:
    """Where a run records its rows: `path`, else $EHRJEPA_RESULTS, else bench/results.csv, except
    that a --quick smoke run records nothing unless told where."""
    if path or os.environ.get("EHRJEPA_RESULTS"):
        return results_path(path)
    return None if quick else RESULTS_CSV


def machine() -> str:
    """A short description of this machine: the GPU if torch (already imported) sees one."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{os.cpu_count()}-core CPU ({platform.machine()})"


def versions(packages=BASE_PACKAGES) -> str:
    """'python 3.11.9; torch 2.13.0; ...' for the installed packages among `packages`."""
    out = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} absent")
    return "; ".join(out)


def append_rows(rows, path=None, command=None, packages=BASE_PACKAGES) -> Path:
    """Append `rows` (dicts keyed by COLUMNS) to the results file, filling status ("ok"), machine,
    versions, date and command where a row leaves them out. Writes the header to a new file."""
    path = results_path(path)
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"results row has unknown column(s) {sorted(unknown)}; "
                             f"columns are {', '.join(COLUMNS)}")
    fill = {"status": "ok", "machine": machine(), "versions": versions(packages),
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "command": command or " ".join(["python", "-m", "bench", *sys.argv[1:]])}
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if header != list(COLUMNS):
            raise ValueError(f"{path}: header {header} is not {list(COLUMNS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in {**fill, **row}.items()})
        f.flush()
    return path


def read_rows(path=None) -> list[dict]:
    """Every row of the results file, as dicts (NUMERIC columns as floats or None)."""
    path = results_path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != list(COLUMNS):
            raise ValueError(f"{path}: header {reader.fieldnames} is not {list(COLUMNS)}")
        return [{k: _number(v) if k in NUMERIC else v for k, v in row.items()} for row in reader]


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _number(v: str):
    return float(v) if v not in ("", "nan") else None
