"""Preprocessing benchmark: `ehrjepa preprocess` against DuckDB, polars and pandas.

    python -m bench preprocess [--rows 5000000,50000000] [--formats csv,csv.gz,parquet,meds]
                               [--tools ehrjepa,duckdb,polars,pandas] [--workdir DIR]
                               [--json PATH] [--repeat N] [--quick]

For each chartevents row count it writes MIMIC-IV-format input (icustays, chartevents,
labevents, ... with `ehrjepa.synth.write_synthetic`), once per format, then times every tool as a
separate child process: wall time of the whole process (start-up and imports included) and peak
RSS. Every baseline does the same aggregation as `ehrjepa preprocess`, on the same files (found
by the library's find_table):

  - itemid -> feature from the feature catalog (ehrjepa.data.catalog, so one parser and one sign
    convention: value = (valuenum + add) * mul; temperature F -> C), drop values outside the
    valid range (inclusive) and empty valuenum;
  - chartevents join icustays on stay_id; labevents join icustays on subject_id; keep events with
    intime - 6 h <= charttime < outtime (stays with outtime <= intime get nothing); a lab held by
    two stays' windows goes to the stay whose [intime, outtime) holds it, else to the earliest;
  - hour = floor((charttime - intime) / 1 h), 0 for the 6 h look-back;
  - group by (stay, hour, feature): mean and count.

Format `meds` (`--format meds`) is the same cohort as a MEDS dataset, `rows` counting every
MEDS event, timed for `ehrjepa preprocess --meds` against DuckDB and polars (no pandas):
bench/preprocess_meds.py holds its input and baselines.

Format `physionet2019` (`--format physionet2019 [--input ARCHIVE]`) times `ehrjepa preprocess
--physionet2019` on the challenge's real archive against polars and pandas doing the same from
it: bench/preprocess_physionet.py holds its baselines and checks.

Prints a markdown table (rows, format, tool, wall s, cpu s (user + system, steadier than wall
time on a shared machine), peak RSS, wall-time speedup against DuckDB measured in the same run)
and writes JSON. On the smallest size (up to 10 M rows) it also checks that ehrjepa's output
agrees with DuckDB's and polars' aggregations group by group. Generated data stays outside the repository
(default /tmp/ehrjepa-bench) and is reused by later runs. Each tool's best run is appended to
bench/results.csv (bench/results.py; a --quick run only with --results).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench import results as results_module
from ehrjepa.data.readers import FORMATS as TABLE_FORMATS, find_table

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("ehrjepa", "duckdb", "polars", "pandas")
FORMATS = tuple(ext[1:] for ext in TABLE_FORMATS)  # csv.gz, csv, parquet
ALL_FORMATS = FORMATS + ("meds",)  # meds: bench/preprocess_meds.py
CHALLENGE_FORMATS = ("physionet2012", "physionet2019")  # bench/preprocess_physionet.py
CHECKED = ("duckdb", "polars")  # the baselines ehrjepa's output is compared with
LOOKBACK_S = 6 * 3600
CHECK_MAX_ROWS = 10_000_000  # the agreement check runs on the smallest size, if at most this
MODULES = {"icustays": "icu", "chartevents": "icu", "labevents": "hosp"}  # the tables read


def table_path(mimic_dir: Path, name: str) -> Path:
    p = find_table(mimic_dir, MODULES[name], name)
    if p is None:
        raise FileNotFoundError(f"{name} not found under {mimic_dir}/{MODULES[name]}/ "
                                f"({', '.join(FORMATS)})")
    return p


def catalog_rows(config: str | Path | None, table: str) -> tuple[list, ...]:
    """Columns (itemid, feature, add, mul, lo, hi) of the catalog's itemids of `table`, what the
    baselines join on: converted = (valuenum + add) * mul, kept when lo <= converted <= hi."""
    from ehrjepa.data.catalog import CONVERSIONS, load_catalog

    rows = [(i, f.name, *CONVERSIONS.get(f.convert.get(i), (0.0, 1.0)), *f.valid)
            for f in load_catalog(config).features if f.table == table for i in f.itemids]
    return tuple(list(c) for c in zip(*rows)) if rows else ([],) * 6


# ----------------------------------------------------------------------------------------------
# input data

def make_input(workdir: Path, rows: int, fmt: str, seed: int = 0, log=print) -> tuple[Path, dict]:
    """MIMIC-format input with about `rows` chartevents rows in format `fmt`; reused if present."""
    from ehrjepa.synth import write_synthetic

    generator = "ehrjepa.synth"
    d = workdir / "data" / f"{generator}-{rows}-seed{seed}" / fmt.replace(".", "_")
    info_path = d / "bench_input.json"
    if info_path.exists():
        return d, json.loads(info_path.read_text())
    patients = patients_for_rows(workdir, rows, seed, log)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    log(f"writing {fmt} input: {patients} patients (~{rows:,} chartevents rows) -> {d}")
    t0 = time.perf_counter()
    counts = write_synthetic(d, patients, seed=seed, fmt=fmt, progress=True)
    info = {"generator": generator, "patients": patients, "seed": seed, "format": fmt,
            "rows": {k: int(v) for k, v in dict(counts).items()},
            "chartevents_bytes": table_path(d, "chartevents").stat().st_size,
            "write_s": round(time.perf_counter() - t0, 2)}
    info_path.write_text(json.dumps(info, indent=2))
    return d, info


def patients_for_rows(workdir: Path, rows: int, seed: int, log) -> int:
    """Patient count giving about `rows` chartevents rows, from a small calibration run."""
    from ehrjepa.synth import write_synthetic

    def chartevents_rows(out: Path, patients: int) -> int:
        return write_synthetic(out, patients, seed=seed, fmt="csv", progress=False)["chartevents"]

    return calibrated_patients(workdir / "data" / f"calibration-synth-{seed}", rows,
                               chartevents_rows, "chartevents rows", log)


def calibrated_patients(cal_dir: Path, rows: int, count_rows, what: str, log,
                        cal_patients: int = 300) -> int:
    """Patients giving about `rows` rows: `count_rows(folder, patients)` writes a calibration
    cohort and returns its rows; the rows per patient are kept in cal_dir/rows.json for later runs."""
    cal_info = cal_dir / "rows.json"
    if cal_info.exists():
        per_patient = json.loads(cal_info.read_text())["per_patient"]
    else:
        if cal_dir.exists():
            shutil.rmtree(cal_dir)
        cal_dir.mkdir(parents=True)
        per_patient = count_rows(cal_dir / "cohort", cal_patients) / cal_patients
        shutil.rmtree(cal_dir / "cohort")
        cal_info.write_text(json.dumps({"per_patient": per_patient}))
        log(f"calibration: {per_patient:.0f} {what} per patient")
    return max(1, round(rows / per_patient))


# ----------------------------------------------------------------------------------------------
# the tools; each runs in its own child process: python -m bench.preprocess --child TOOL ...

def run_ehrjepa(mimic_dir: Path, out: Path, config: str | None) -> int:
    from ehrjepa.data.preprocess import preprocess
    preprocess(mimic_dir, out, config=config, progress=False)
    return int(json.loads((out / "manifest.json").read_text())["total_hours"])


def run_duckdb(mimic_dir: Path, out: Path, config: str | None) -> int:
    import duckdb
    import pyarrow as pa
    con = duckdb.connect()
    for table in ("chartevents", "labevents"):
        ids, feats, add, mul, lo, hi = catalog_rows(config, table)
        con.register(f"spec_{table}_arrow", pa.table({
            "itemid": pa.array(ids, pa.int64()), "feature": feats, "add": add, "mul": mul,
            "lo": pa.array(lo, pa.float64()), "hi": pa.array(hi, pa.float64())}))
        con.execute(f"create temp table spec_{table} as select * from spec_{table}_arrow")

    def src(name, types):
        p = table_path(mimic_dir, name)
        if p.suffix == ".parquet":
            return f"read_parquet('{p}')"
        struct = ", ".join(f"'{k}': '{v}'" for k, v in types.items())
        return f"read_csv('{p}', header=true, types={{{struct}}})"

    ce = src("chartevents", {"stay_id": "BIGINT", "itemid": "BIGINT", "valuenum": "DOUBLE",
                             "charttime": "TIMESTAMP"})
    lab = src("labevents", {"labevent_id": "BIGINT", "subject_id": "BIGINT", "itemid": "BIGINT",
                            "valuenum": "DOUBLE", "charttime": "TIMESTAMP", "hadm_id": "BIGINT"})
    icu = src("icustays", {"stay_id": "BIGINT", "subject_id": "BIGINT", "intime": "TIMESTAMP",
                           "outtime": "TIMESTAMP"})
    con.execute(f"""
      create temp table stays as select stay_id::BIGINT as stay_id, subject_id::BIGINT as subject_id,
             epoch(intime::TIMESTAMP)::BIGINT as t_in, epoch(outtime::TIMESTAMP)::BIGINT as t_out
      from {icu} where outtime::TIMESTAMP > intime::TIMESTAMP""")
    con.execute(f"""
      copy (
        with ce as (
          select c.stay_id::BIGINT as stay_id, epoch(c.charttime::TIMESTAMP)::BIGINT as t, s.feature,
                 (c.valuenum::DOUBLE + s.add) * s.mul as v, s.lo, s.hi
          from {ce} c join spec_chartevents s on c.itemid::BIGINT = s.itemid
          where c.valuenum is not null),
        ce_kept as (
          select ce.stay_id, ce.t, st.t_in, ce.feature, ce.v
          from ce join stays st using (stay_id)
          where ce.v between ce.lo and ce.hi and ce.t >= st.t_in - {LOOKBACK_S} and ce.t < st.t_out),
        lab as (
          select l.labevent_id::BIGINT as labevent_id, l.subject_id::BIGINT as subject_id,
                 epoch(l.charttime::TIMESTAMP)::BIGINT as t, s.feature,
                 (l.valuenum::DOUBLE + s.add) * s.mul as v, s.lo, s.hi
          from {lab} l join spec_labevents s on l.itemid::BIGINT = s.itemid
          where l.valuenum is not null),
        lab_kept as (
          select st.stay_id, lab.t, st.t_in, lab.feature, lab.v
          from lab join stays st on lab.subject_id = st.subject_id
            and lab.t >= st.t_in - {LOOKBACK_S} and lab.t < st.t_out
          where lab.v between lab.lo and lab.hi
          qualify row_number() over (partition by lab.labevent_id
                                     order by (lab.t >= st.t_in) desc, st.t_in, st.stay_id) = 1),
        events as (select * from ce_kept union all select * from lab_kept)
        select stay_id, greatest((t - t_in) // 3600, 0)::BIGINT as hour, feature,
               avg(v) as mean, count(*)::BIGINT as n
        from events group by all
      ) to '{out / "agg.parquet"}' (format parquet)""")
    return con.execute(f"select count(*) from '{out / 'agg.parquet'}'").fetchone()[0]


def run_polars(mimic_dir: Path, out: Path, config: str | None) -> int:
    import polars as pl

    def scan(name, cols, ints):
        p = table_path(mimic_dir, name)
        if p.suffix == ".parquet":
            lf = pl.scan_parquet(p).select(cols)
        else:
            lf = pl.scan_csv(p, schema_overrides={**{c: pl.Int64 for c in ints}, "valuenum": pl.Float64}
                             ).select(cols)
        casts = [pl.col(c).cast(pl.Int64) for c in ints]
        for c in cols:  # timestamps: text in csv, maybe text or timestamp in parquet
            if c in ("charttime", "intime", "outtime"):
                dtype = lf.collect_schema()[c]
                e = pl.col(c).str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us") if dtype == pl.String \
                    else pl.col(c).cast(pl.Datetime("us"))
                casts.append((e.dt.epoch("s")).alias(c))
        return lf.with_columns(casts)

    def spec_frame(table):
        ids, feats, add, mul, lo, hi = catalog_rows(config, table)
        return pl.LazyFrame({"itemid": ids, "feature": feats, "add": add, "mul": mul, "lo": lo, "hi": hi},
                            schema_overrides={"itemid": pl.Int64, "lo": pl.Float64, "hi": pl.Float64})

    stays = scan("icustays", ["stay_id", "subject_id", "intime", "outtime"], ["stay_id", "subject_id"]) \
        .rename({"intime": "t_in", "outtime": "t_out"}).filter(pl.col("t_out") > pl.col("t_in"))
    v = ((pl.col("valuenum") + pl.col("add")) * pl.col("mul")).alias("v")
    ce = (scan("chartevents", ["stay_id", "charttime", "itemid", "valuenum"], ["stay_id", "itemid"])
          .join(spec_frame("chartevents"), on="itemid")
          .with_columns(v).filter(pl.col("v").is_between(pl.col("lo"), pl.col("hi")))
          .join(stays.select("stay_id", "t_in", "t_out"), on="stay_id")
          .filter((pl.col("charttime") >= pl.col("t_in") - LOOKBACK_S) & (pl.col("charttime") < pl.col("t_out")))
          .select("stay_id", "charttime", "t_in", "feature", "v"))
    lab = (scan("labevents", ["labevent_id", "subject_id", "charttime", "itemid", "valuenum"],
                ["labevent_id", "subject_id", "itemid"])
           .join(spec_frame("labevents"), on="itemid")
           .with_columns(v).filter(pl.col("v").is_between(pl.col("lo"), pl.col("hi")))
           .join(stays, on="subject_id")
           .filter((pl.col("charttime") >= pl.col("t_in") - LOOKBACK_S) & (pl.col("charttime") < pl.col("t_out")))
           .with_columns((pl.col("charttime") < pl.col("t_in")).alias("before"))
           .sort(["labevent_id", "before", "t_in", "stay_id"])
           .unique(subset="labevent_id", keep="first", maintain_order=False)
           .select("stay_id", "charttime", "t_in", "feature", "v"))
    agg = (pl.concat([ce, lab])
           .with_columns(((pl.col("charttime") - pl.col("t_in")) // 3600).clip(lower_bound=0).alias("hour"))
           .group_by("stay_id", "hour", "feature")
           .agg(pl.col("v").mean().alias("mean"), pl.len().cast(pl.Int64).alias("n"))
           .collect())
    agg.write_parquet(out / "agg.parquet")
    return agg.height


def run_pandas(mimic_dir: Path, out: Path, config: str | None) -> int:
    import pandas as pd

    def read(name, cols):
        p = table_path(mimic_dir, name)
        if p.suffix == ".parquet":
            df = pd.read_parquet(p, columns=cols)
        else:
            df = pd.read_csv(p, usecols=cols, dtype={"valuenum": "float64"})
        for c in ("charttime", "intime", "outtime"):
            if c in df:
                df[c] = pd.to_datetime(df[c], format="%Y-%m-%d %H:%M:%S").astype("datetime64[s]") \
                    .astype("int64") if df[c].dtype == object or str(df[c].dtype).startswith(("str", "string")) \
                    else df[c].astype("datetime64[s]").astype("int64")
        return df

    def spec_frame(table):
        ids, feats, add, mul, lo, hi = catalog_rows(config, table)
        return pd.DataFrame({"itemid": ids, "feature": feats, "add": add, "mul": mul, "lo": lo, "hi": hi})

    def convert(df, table):
        df = df.merge(spec_frame(table), on="itemid")
        df["v"] = (df["valuenum"] + df["add"]) * df["mul"]
        return df[(df["v"] >= df["lo"]) & (df["v"] <= df["hi"])]

    stays = read("icustays", ["stay_id", "subject_id", "intime", "outtime"]) \
        .rename(columns={"intime": "t_in", "outtime": "t_out"})
    stays = stays[stays.t_out > stays.t_in]
    ce = convert(read("chartevents", ["stay_id", "charttime", "itemid", "valuenum"]), "chartevents")
    ce = ce.merge(stays[["stay_id", "t_in", "t_out"]], on="stay_id")
    ce = ce[(ce.charttime >= ce.t_in - LOOKBACK_S) & (ce.charttime < ce.t_out)]
    lab = convert(read("labevents", ["labevent_id", "subject_id", "charttime", "itemid", "valuenum"]), "labevents")
    lab = lab.merge(stays, on="subject_id")
    lab = lab[(lab.charttime >= lab.t_in - LOOKBACK_S) & (lab.charttime < lab.t_out)]
    lab = lab.assign(before=lab.charttime < lab.t_in) \
        .sort_values(["labevent_id", "before", "t_in", "stay_id"]).drop_duplicates("labevent_id")
    cols = ["stay_id", "charttime", "t_in", "feature", "v"]
    events = pd.concat([ce[cols], lab[cols]], ignore_index=True)
    events["hour"] = ((events.charttime - events.t_in) // 3600).clip(lower=0)
    agg = events.groupby(["stay_id", "hour", "feature"]).v.agg(mean="mean", n="count").reset_index()
    agg.to_parquet(out / "agg.parquet", index=False)
    return len(agg)


def run_child(tool: str, mimic_dir: Path, out: Path, config: str | None, fmt: str = "") -> int:
    """Run one tool in this process (the parent times the process); print a JSON line.
    fmt "meds": mimic_dir is a MEDS dataset (bench/preprocess_meds.py's runners)."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "meds":
        from bench.preprocess_meds import RUNNERS
        groups = RUNNERS[tool](mimic_dir, out, config)
    elif tool == "ehrjepa":
        groups = run_ehrjepa(mimic_dir, out, config)
    else:
        groups = {"duckdb": run_duckdb, "polars": run_polars, "pandas": run_pandas}[tool](mimic_dir, out, config)
    print(json.dumps({"tool": tool, "inner_s": round(time.perf_counter() - t0, 3), "groups": int(groups)}))
    return 0


# ----------------------------------------------------------------------------------------------
# agreement of ehrjepa's output with an aggregation table (stay_id, hour, feature, mean, n)

def load_aggregation(path: Path) -> dict:
    """Observed cells of an ehrjepa OUT directory, or a baseline's agg.parquet: arrays stay_id,
    hour, code, n, mean, and `names` (feature name of each code)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.is_dir():
        t = pq.read_table(path, columns=["stay_id", "hour", "feature", "n", "mean"])
        names = sorted(pc.unique(t.column("feature")).to_pylist())
        code = pc.index_in(t.column("feature"), value_set=pa.array(names, pa.string()))
        return {"stay_id": t.column("stay_id").to_numpy(), "hour": t.column("hour").to_numpy(),
                "code": code.to_numpy(), "n": t.column("n").to_numpy(),
                "mean": t.column("mean").to_numpy(), "names": names}
    stays = pq.read_table(path / "stays.parquet", columns=["stay_id", "n_hours", "offset"])
    names = json.loads((path / "features.json").read_text())["features"]
    mean = np.load(path / "mean.npy", mmap_mode="r")
    count = np.load(path / "count.npy", mmap_mode="r")
    n_hours = stays.column("n_hours").to_numpy().astype(np.int64)
    offset = stays.column("offset").to_numpy().astype(np.int64)
    stay_of_row = np.repeat(stays.column("stay_id").to_numpy(), n_hours)
    hour = np.arange(len(stay_of_row)) - np.repeat(np.cumsum(n_hours) - n_hours, n_hours)
    row = np.repeat(offset, n_hours) + hour  # row of mean/count holding (stay, hour)
    rows, cols = np.nonzero(~np.isnan(mean[row]))
    return {"stay_id": stay_of_row[rows], "hour": hour[rows], "code": cols,
            "n": np.asarray(count[row[rows], cols], np.int64),
            "mean": np.asarray(mean[row[rows], cols], np.float64), "names": names}


def aggregation_dict(path: Path) -> dict:
    """{(stay_id, hour, feature): (n, mean)}; for small outputs (tests)."""
    t = load_aggregation(path)
    keys = zip(t["stay_id"].tolist(), t["hour"].tolist(), [t["names"][c] for c in t["code"]])
    return dict(zip(keys, zip(t["n"].tolist(), t["mean"].tolist())))


def compare_aggregations(ours_path: Path, theirs_path: Path, rtol: float = 1e-4) -> dict:
    """Group-by-group comparison of two aggregations (ehrjepa OUT dirs or agg.parquet files):
    groups on one side only, counts that differ, means that differ beyond rtol."""
    a, b = load_aggregation(ours_path), load_aggregation(theirs_path)
    names = sorted(set(a["names"]) | set(b["names"]))
    if len(names) >= 1 << 8:
        raise ValueError(f"{len(names)} features: more than this comparison packs")

    def key(t):  # (stay_id, hour, feature) packed into one int64
        code = np.array([names.index(n) for n in t["names"]], np.int64)[t["code"]]
        hour = t["hour"].astype(np.int64)
        if len(hour) and (hour.min() < 0 or hour.max() >= 1 << 20):
            raise ValueError("hour out of the range this comparison packs")
        return (t["stay_id"].astype(np.int64) << 28) | (hour << 8) | code

    ka, kb = key(a), key(b)
    common, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    count_diff = np.minimum(a["n"][ia], 65535) != np.minimum(b["n"][ib], 65535)
    mean_diff = ~np.isclose(a["mean"][ia], b["mean"][ib], rtol=rtol, atol=1e-3)
    only_a, only_b = np.ones(len(ka), bool), np.ones(len(kb), bool)
    only_a[ia], only_b[ib] = False, False
    decode = lambda k: (int(k >> 28), int((k >> 8) & ((1 << 20) - 1)), names[int(k & 255)])
    examples = ([("only ehrjepa",) + decode(k) for k in ka[only_a][:3]]
                + [("only baseline",) + decode(k) for k in kb[only_b][:3]]
                + [("count",) + decode(k) for k in common[count_diff][:3]]
                + [("mean",) + decode(k) for k in common[mean_diff][:3]])
    result = {
        "groups_ehrjepa": len(ka), "groups_baseline": len(kb),
        "events_ehrjepa": int(a["n"].sum()), "events_baseline": int(b["n"].sum()),
        "sum_ehrjepa": float((a["n"] * a["mean"]).sum()), "sum_baseline": float((b["n"] * b["mean"]).sum()),
        "only_ehrjepa": len(ka) - len(common), "only_baseline": len(kb) - len(common),
        "count_mismatches": int(count_diff.sum()), "mean_mismatches": int(mean_diff.sum()),
        "examples": [str(e) for e in examples],
    }
    result["agree"] = not (result["only_ehrjepa"] or result["only_baseline"]
                           or result["count_mismatches"] or result["mean_mismatches"])
    return result


# ----------------------------------------------------------------------------------------------
# the benchmark

def tools_for(fmt: str, tools: list[str]) -> list[str]:
    """The asked tools that have a runner for `fmt` (MEDS: no pandas)."""
    if fmt != "meds":
        return tools
    from bench.preprocess_meds import RUNNERS
    return [t for t in tools if t in RUNNERS]


def result_rows(best: dict, runs: list[dict], note: str = "") -> list[dict]:
    """bench/results.csv rows: each (rows, format, tool)'s best run, and the failed ones;
    `note` (the run's repeats and the machine's load) on each."""
    rows = [{"benchmark": "preprocess", "case": f"{fmt} {rows_target:,}",
             "shape": f"{r['rows']:,} {'events' if fmt == 'meds' else 'rows'}",
             "tool": tool, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
             "rss_mb": r["peak_rss_bytes"] / 2**20, "note": note}
            for (rows_target, fmt, tool), r in best.items()]
    failed = {(r["rows_target"], r["format"], r["tool"]): r for r in runs if "error" in r}
    rows += [{"benchmark": "preprocess", "case": f"{fmt} {rows_target:,}", "tool": tool,
              "status": f"failed: {r['error']}", "note": note}
             for (rows_target, fmt, tool), r in failed.items() if (rows_target, fmt, tool) not in best]
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", default=None,
                        help="chartevents row counts, comma separated (default 5000000,50000000)")
    parser.add_argument("--formats", "--format", dest="formats", default=None,
                        help="csv,csv.gz,parquet,meds (default: the MIMIC formats csv.gz,csv,parquet),"
                             " or physionet2019 alone (the challenge's archive, --input)")
    parser.add_argument("--input", default=None, metavar="PATH",
                        help="physionet2019: the challenge's archive (default "
                             "../shared/physionet2019/training_setA.tar.gz)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="ehrjepa,duckdb,polars,pandas")
    parser.add_argument("--workdir", default="/tmp/ehrjepa-bench",
                        help="generated input and outputs (outside the repo; reused between runs)")
    parser.add_argument("--json", default=None, help="write results here (default WORKDIR/preprocess.json)")
    parser.add_argument("--features", "--config", dest="features", default=None,
                        help="feature catalog (default configs/features.yaml; --config is an alias)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200,000 rows, csv and parquet (unless --rows/--formats say)")
    parser.add_argument("--no-check", action="store_true", help="skip the ehrjepa vs DuckDB agreement check")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per tool run")
    results_module.add_option(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mimic-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-format", default="", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench preprocess", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, Path(args.mimic_dir), Path(args.out), args.features,
                         args.child_format)
    from bench.common import fmt_bytes, machine_info, markdown_table, run_measured, write_json

    if args.formats and any(f.strip() in CHALLENGE_FORMATS for f in args.formats.split(",")):
        from bench import preprocess_physionet
        return preprocess_physionet.main(args, parser)
    if args.quick:
        args.rows = args.rows or "200000"
        args.formats = args.formats or "csv,parquet"
    args.rows = args.rows or "5000000,50000000"
    args.formats = args.formats or ",".join(FORMATS)
    rows_list = [int(float(r)) for r in args.rows.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]
    tools = [t.strip() for t in args.tools.split(",")]
    for f in formats:
        if f not in ALL_FORMATS:
            parser.error(f"unknown format {f!r}; choose from {ALL_FORMATS}")
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}; choose from {TOOLS}")
    workdir = Path(args.workdir).resolve()
    if REPO in workdir.parents or workdir == REPO:
        parser.error(f"--workdir {workdir} is inside the repository; keep generated data outside")
    workdir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else workdir / "preprocess.json"
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    results = {"machine": machine_info(), "args": vars(args), "runs": [], "checks": []}
    for rows in rows_list:
        for fmt in formats:
            if fmt == "meds":
                from bench.preprocess_meds import make_meds_input
                mimic_dir, info = make_meds_input(workdir, rows, seed=args.seed, log=log)
            else:
                mimic_dir, info = make_input(workdir, rows, fmt, seed=args.seed, log=log)
            for rep in range(args.repeat):
                for tool in tools_for(fmt, tools):  # interleaved, so noise hits every tool alike
                    out = workdir / "out" / f"{rows}-{fmt.replace('.', '_')}-{tool}"
                    if out.exists():
                        shutil.rmtree(out)
                    cmd = [sys.executable, "-m", "bench.preprocess", "--child", tool,
                           "--mimic-dir", str(mimic_dir), "--out", str(out)]
                    if args.features:
                        cmd += ["--features", args.features]
                    if fmt == "meds":
                        cmd += ["--child-format", fmt]
                    m = run_measured(cmd, cwd=REPO, timeout_s=args.timeout)
                    run = {"rows": info["rows"].get("chartevents", info["rows"].get("events", rows)),
                           "rows_target": rows, "labevents_rows": info["rows"].get("labevents"),
                           "format": fmt, "input_bytes": info.get("input_bytes", info.get("chartevents_bytes")),
                           "tool": tool, "repeat": rep,
                           **m.as_dict()}
                    if m.returncode == 0:
                        run.update(json.loads(m.stdout.strip().splitlines()[-1]))
                        log(f"{rows:>11,} {fmt:8} {tool:8} {m.wall_s:7.2f} s  {m.cpu_s:7.2f} cpu s  "
                            f"{fmt_bytes(m.peak_rss_bytes)}")
                    else:
                        run["error"] = m.stderr.strip().splitlines()[-1] if m.stderr.strip() else "failed"
                        log(f"{rows:>11,} {fmt:8} {tool:8} FAILED (exit {m.returncode}):\n{m.stderr[-2000:]}")
                    results["runs"].append(run)
                    write_json(json_path, results)
            # agreement on the smallest size, from this format's outputs
            if rows == min(rows_list) and rows <= CHECK_MAX_ROWS and not args.no_check:
                ours = workdir / "out" / f"{rows}-{fmt.replace('.', '_')}-ehrjepa"
                for baseline in (t for t in CHECKED if t in tools_for(fmt, tools)):
                    theirs = workdir / "out" / f"{rows}-{fmt.replace('.', '_')}-{baseline}" / "agg.parquet"
                    if not ((ours / "mean.npy").exists() and theirs.exists()):
                        continue
                    check = {"rows": rows, "format": fmt, "baseline": baseline,
                             **compare_aggregations(ours, theirs)}
                    results["checks"].append(check)
                    log(f"check ehrjepa vs {baseline} ({fmt}): {'agree' if check['agree'] else 'DISAGREE'} "
                        f"({check['groups_ehrjepa']:,} vs {check['groups_baseline']:,} groups)")
                    write_json(json_path, results)

    # table: best of the repeats per (rows, format, tool); speedup = DuckDB wall / tool wall
    best = {}
    for r in results["runs"]:
        k = (r["rows_target"], r["format"], r["tool"])
        if "error" not in r and (k not in best or r["wall_s"] < best[k]["wall_s"]):
            best[k] = r
    table = []
    for rows in rows_list:
        for fmt in formats:
            duck = best.get((rows, fmt, "duckdb"))
            for tool in tools_for(fmt, tools):
                r = best.get((rows, fmt, tool))
                if r is None:
                    table.append([f"{rows:,}", fmt, "-", tool, "failed", "-", "-", "-"])
                    continue
                speed = f"{duck['wall_s'] / r['wall_s']:.2f}x" if duck else "-"
                table.append([f"{r['rows']:,}", fmt, f"{r['input_bytes'] / 1e6:,.0f}", tool,
                              f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", fmt_bytes(r["peak_rss_bytes"]),
                              speed])
    record = results_module.destination(args.results, args.quick)
    if record:  # wall times on a shared machine depend on its load: say it
        note = (f"best of {args.repeat}; load {results['machine']['load_avg_1m']:.1f} at the start, "
                f"{os.getloadavg()[0]:.1f} at the end (1-min average, "
                f"{results['machine']['cpus']} CPUs)")
        results_module.append_rows(result_rows(best, results["runs"], note), record,
                                   packages=("numba", "pyarrow", "duckdb", "polars", "pandas"))
    results["table"] = markdown_table(
        ["rows (chartevents; meds: events)", "format", "input MB", "tool", "wall s", "cpu s", "peak RSS", "vs DuckDB"],
        table)
    write_json(json_path, results)
    mi = results["machine"]
    print(f"\nmachine: {mi['cpus']} CPUs, {mi['memory_gb']} GB, load {mi['load_avg_1m']:.1f}; "
          f"best of {args.repeat}; wall time of the whole process\n")
    print(results["table"])
    for c in results["checks"]:
        print(f"\nehrjepa vs {c['baseline']} ({c['rows']:,} rows, {c['format']}): "
              f"{'agree' if c['agree'] else 'DISAGREE'}: {c['groups_ehrjepa']:,} / {c['groups_baseline']:,} groups, "
              f"{c['events_ehrjepa']:,} / {c['events_baseline']:,} events")
    print(f"\nJSON: {json_path}")
    if record:
        print(f"rows appended to {record}")
    failed = [r for r in results["runs"] if "error" in r]
    disagree = [c for c in results["checks"] if not c["agree"]]
    return 1 if failed or disagree else 0


if __name__ == "__main__":
    sys.exit(main())
