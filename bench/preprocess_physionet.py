"""The PhysioNet/CinC challenge side of the preprocessing benchmark: `--format physionet2019`.

    python -m bench preprocess --format physionet2019 [--input PATH] [--tools ehrjepa,polars,pandas]
                               [--repeat N] [--workdir DIR] [--results CSV]

The input is the challenge's own archive (default ../shared/physionet2019/training_setA.tar.gz
beside the repository; --input another .tar.gz of .psv files), never generated. Each tool runs as
its own process on that same archive, timed whole (start-up and imports included, peak RSS):

  - ehrjepa: `ehrjepa preprocess --physionet2019 ARCHIVE --out OUT` (the real CLI);
  - polars, pandas: the archive inflated in memory (ISA-L, as ehrjepa does), its members listed
    by the standard library's tarfile over that buffer, each file's header checked and dropped,
    the bodies joined and parsed in one read_csv (all 41 columns float64, NaN null), then the
    rules of ehrjepa/data/physionet2019.py: hour = row within the file, ICULOS one more than
    the row before's, SepsisLabel 0 or 1, the measured columns unpivoted to (stay, hour,
    feature) events converted by the catalog (value + add) * mul and kept inside the valid range
    (inclusive); written as OUT/agg.parquet (stay_id, hour, feature, mean, n), the hourly labels
    as OUT/labels.parquet and the stays' first-row demographics and sepsis as OUT/stays.parquet.

Every (stay, hour, feature) holds one value here (one row per hour), so the baselines need no
group-by. After the runs ehrjepa's output is compared with each baseline's group by group (the
values and counts, bench/preprocess.py's compare_aggregations) and hour by hour (the labels).
A baseline's JSON line also says how long it spent getting the members' bytes (`read_s`): the
tarfile listing is a large part of it, and it is what these libraries offer for a tar archive.

`--format physionet2012`: the same for the 2012 challenge's set tarballs (default
../shared/physionet2012, both sets; `--input` a folder of set-X.tar.gz or one tarball): each
tool inflates the tarballs and produces the hourly aggregation by the rules of
ehrjepa/data/physionet2012.py (run_polars_2012), compared group by group with ehrjepa's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("physionet2012", "physionet2019")
TOOLS = ("ehrjepa", "polars", "pandas")
DEFAULT_INPUT = {"physionet2019": REPO.parent / "shared" / "physionet2019" / "training_setA.tar.gz",
                 "physionet2012": REPO.parent / "shared" / "physionet2012"}
STAY_FILE = re.compile(r"(?:.*/)?p(\d+)\.psv")


def columns_2019() -> tuple[str, ...]:
    from ehrjepa.data.physionet2019 import COLUMNS
    return COLUMNS


def spec_2019(config: str | None) -> dict[str, list]:
    """The catalog as the baselines join it: per challenge column its feature, add, mul, lo, hi."""
    from ehrjepa.data.catalog import load_catalog

    catalog = load_catalog(config).for_source("physionet2019")
    low, high = catalog.valid_ranges()
    cols = {k: [] for k in ("column", "feature", "add", "mul", "lo", "hi")}
    for name, (k, add, mul) in catalog.params("physionet2019").items():
        for key, v in zip(cols, (name, catalog.names[k], add, mul, float(low[k]), float(high[k]))):
            cols[key].append(v)
    return cols


# ----------------------------------------------------------------------------------------------
# the baselines' reading: the same archive, the standard library's tarfile


def read_members(path: Path) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(the .psv files' bodies joined, stay id per file, rows per file), in member order; each
    file's header must be the challenge's."""
    import tarfile

    from isal import igzip

    header = "|".join(columns_2019()).encode()
    raw = path.read_bytes()
    if path.name.endswith((".gz", ".tgz")):
        raw = igzip.decompress(raw)
    bodies, ids, rows = [], [], []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            found = STAY_FILE.fullmatch(m.name)
            if found is None:
                continue
            data = raw[m.offset_data:m.offset_data + m.size]
            cut = data.find(b"\n")
            if data[:cut].rstrip(b"\r") != header:
                raise ValueError(f"{path}:{m.name}: the header differs")
            body = data[cut + 1:]
            if body and not body.endswith(b"\n"):
                body += b"\n"
            bodies.append(body)
            ids.append(int(found.group(1)))
            rows.append(body.count(b"\n"))
    return b"".join(bodies), np.array(ids, np.int64), np.array(rows, np.int64)


def stay_hour(ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stay = np.repeat(ids, rows)
    hour = np.arange(len(stay)) - np.repeat(np.cumsum(rows) - rows, rows)
    return stay, hour


def check_rows(iculos: np.ndarray, label: np.ndarray, hour: np.ndarray, rows: np.ndarray) -> None:
    """ICULOS one more than the row before's within each file; SepsisLabel 0 or 1."""
    base = iculos - hour
    first = np.repeat(base[np.cumsum(rows) - rows], rows)
    if not (base == first).all():
        raise ValueError(f"ICULOS is not one more than the row before's (row {int(np.argmax(base != first))})")
    if not np.isin(label, (0.0, 1.0)).all():
        raise ValueError("a SepsisLabel is not 0 or 1")


# ----------------------------------------------------------------------------------------------
# the tools (each in its own child process)


def run_polars(path: Path, out: Path, config: str | None) -> dict:
    import polars as pl

    t0 = time.perf_counter()
    body, ids, rows = read_members(path)
    read_s = time.perf_counter() - t0
    cols = columns_2019()
    df = pl.read_csv(io.BytesIO(body), has_header=False, new_columns=list(cols), separator="|",
                     schema={c: pl.Float64 for c in cols}, null_values=["NaN", ""])
    stay, hour = stay_hour(ids, rows)
    df = df.with_columns(pl.Series("stay_id", stay), pl.Series("hour", hour))
    check_rows(df["ICULOS"].to_numpy(), df["SepsisLabel"].fill_null(-1).to_numpy(), hour, rows)
    spec = pl.DataFrame(spec_2019(config))
    agg = (df.select("stay_id", "hour", *spec["column"].to_list())
           .unpivot(index=["stay_id", "hour"], variable_name="column", value_name="x")
           .drop_nulls("x").join(spec, on="column")
           .with_columns(((pl.col("x") + pl.col("add")) * pl.col("mul")).alias("mean"))
           .filter(pl.col("mean").is_between(pl.col("lo"), pl.col("hi")))
           .select("stay_id", "hour", "feature", "mean", pl.lit(1, pl.Int64).alias("n")))
    agg.write_parquet(out / "agg.parquet")
    df.select("stay_id", "hour", pl.col("SepsisLabel").cast(pl.Int8).alias("sepsis_label")) \
        .write_parquet(out / "labels.parquet")
    (df.group_by("stay_id", maintain_order=True)
     .agg(pl.col("Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS").first(),
          (pl.col("SepsisLabel").max()).alias("sepsis"),
          (pl.col("hour").filter(pl.col("SepsisLabel") == 1).min() + 6).alias("sepsis_onset_hour"))
     .write_parquet(out / "stays.parquet"))
    return {"groups": agg.height, "rows": int(rows.sum()), "read_s": round(read_s, 3)}


def run_pandas(path: Path, out: Path, config: str | None) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    body, ids, rows = read_members(path)
    read_s = time.perf_counter() - t0
    cols = columns_2019()
    df = pd.read_csv(io.BytesIO(body), sep="|", header=None, names=list(cols),
                     dtype={c: "float64" for c in cols})
    stay, hour = stay_hour(ids, rows)
    df["stay_id"], df["hour"] = stay, hour
    check_rows(df["ICULOS"].to_numpy(), df["SepsisLabel"].fillna(-1).to_numpy(), hour, rows)
    spec = pd.DataFrame(spec_2019(config))
    long = df.melt(id_vars=["stay_id", "hour"], value_vars=list(spec["column"]),
                   var_name="column", value_name="x").dropna(subset=["x"]).merge(spec, on="column")
    long["mean"] = (long["x"] + long["add"]) * long["mul"]
    agg = long[(long["mean"] >= long["lo"]) & (long["mean"] <= long["hi"])]
    agg = agg[["stay_id", "hour", "feature", "mean"]].assign(n=1)
    agg.to_parquet(out / "agg.parquet", index=False)
    df[["stay_id", "hour"]].assign(sepsis_label=df["SepsisLabel"].astype("int8")) \
        .to_parquet(out / "labels.parquet", index=False)
    g = df.groupby("stay_id", sort=False)
    stays = g[["Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS"]].first()
    stays["sepsis"] = g["SepsisLabel"].max()
    stays["sepsis_onset_hour"] = df[df["SepsisLabel"] == 1].groupby("stay_id")["hour"].min() + 6
    stays.reset_index().to_parquet(out / "stays.parquet", index=False)
    return {"groups": len(agg), "rows": int(rows.sum()), "read_s": round(read_s, 3)}


# ----------------------------------------------------------------------------------------------
# the 2012 challenge: the same hourly aggregation from the same set tarballs

DESCRIPTORS_2012 = ("RecordID", "Age", "Gender", "Height", "ICUType")
RECORD_FILE = re.compile(r"(?:.*/)?(\d+)\.txt")


def spec_2012(config: str | None) -> dict[str, list]:
    """Per 2012 parameter: its feature, add, mul, lo, hi and hourly aggregation (the catalog's)."""
    from ehrjepa.data.catalog import load_catalog

    catalog = load_catalog(config).for_source("physionet2012")
    low, high = catalog.valid_ranges()
    cols = {k: [] for k in ("param", "feature", "add", "mul", "lo", "hi", "agg")}
    for name, (k, add, mul) in catalog.params("physionet2012").items():
        for key, v in zip(cols, (name, catalog.names[k], add, mul, float(low[k]), float(high[k]),
                                 catalog.features[k].aggregation)):
            cols[key].append(v)
    return cols


def read_sets_2012(path: Path) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(every RecordID.txt body of the set tarballs under `path` joined, without its header
    line; RecordID per file; lines per file), the tarballs inflated in memory and listed by the
    standard library's tarfile."""
    import tarfile

    from isal import igzip

    tarballs = sorted(path.glob("set-*.tar.gz")) if path.is_dir() else [path]
    bodies, ids, lines = [], [], []
    for tb in tarballs:
        raw = igzip.decompress(tb.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for m in tar:
                found = RECORD_FILE.fullmatch(m.name) if m.isfile() else None
                if found is None:
                    continue
                data = raw[m.offset_data:m.offset_data + m.size]
                body = data[data.find(b"\n") + 1:]
                if body and not body.endswith(b"\n"):
                    body += b"\n"
                bodies.append(body)
                ids.append(int(found.group(1)))
                lines.append(body.count(b"\n"))
    return b"".join(bodies), np.array(ids, np.int64), np.array(lines, np.int64)


def run_polars_2012(path: Path, out: Path, config: str | None) -> dict:
    """The rules of ehrjepa/data/physionet2012.py in polars: hour = minutes // 60 with 48:00 in
    hour 47; the descriptors (RecordID, Age, Gender, Height, ICUType, and each file's first
    Weight at 00:00) are not events; values converted and kept inside the valid range; per
    (stay, hour, feature) the mean, sum or last value (by the feature's aggregation) and count."""
    import polars as pl

    t0 = time.perf_counter()
    body, ids, lines = read_sets_2012(path)
    read_s = time.perf_counter() - t0
    df = pl.read_csv(io.BytesIO(body), has_header=False, new_columns=["time", "param", "value"],
                     schema={"time": pl.Utf8, "param": pl.Utf8, "value": pl.Float64})
    stay, line = stay_hour(ids, lines)
    hhmm = pl.col("time").str.split_exact(":", 1)
    df = (df.with_columns(pl.Series("stay_id", stay), pl.Series("line", line))
          .with_columns((hhmm.struct.field("field_0").cast(pl.Int64) * 60
                         + hhmm.struct.field("field_1").cast(pl.Int64)).alias("minute"))
          .filter(~pl.col("param").is_in(DESCRIPTORS_2012)))
    first_weight = ((pl.col("param") == "Weight") & (pl.col("minute") == 0)
                    & (pl.col("line") == pl.col("line").filter(
                        (pl.col("param") == "Weight") & (pl.col("minute") == 0)).min()
                       .over("stay_id")))
    spec = pl.DataFrame(spec_2012(config))
    ev = (df.filter(~first_weight.fill_null(False)).join(spec, on="param")
          .with_columns(((pl.col("value") + pl.col("add")) * pl.col("mul")).alias("v"),
                        pl.min_horizontal(pl.col("minute") // 60, pl.lit(47)).alias("hour"))
          .filter(pl.col("v").is_between(pl.col("lo"), pl.col("hi"))))
    agg = (ev.sort("stay_id", "line")
           .group_by("stay_id", "hour", "feature")
           .agg(pl.col("agg").first(), pl.col("v").mean().alias("m"), pl.col("v").sum().alias("s"),
                pl.col("v").last().alias("l"), pl.len().alias("n"))
           .select("stay_id", "hour", "feature",
                   pl.when(pl.col("agg") == "sum").then(pl.col("s"))
                   .when(pl.col("agg") == "last").then(pl.col("l")).otherwise(pl.col("m"))
                   .alias("mean"), pl.col("n").cast(pl.Int64)))
    agg.write_parquet(out / "agg.parquet")
    return {"groups": agg.height, "rows": int(lines.sum()), "read_s": round(read_s, 3)}


def run_pandas_2012(path: Path, out: Path, config: str | None) -> dict:
    """run_polars_2012's rules in pandas."""
    import pandas as pd

    t0 = time.perf_counter()
    body, ids, lines = read_sets_2012(path)
    read_s = time.perf_counter() - t0
    df = pd.read_csv(io.BytesIO(body), header=None, names=["time", "param", "value"],
                     dtype={"time": str, "param": str, "value": "float64"})
    df["stay_id"], df["line"] = stay_hour(ids, lines)
    hh, mm = df["time"].str.split(":", n=1, expand=True).astype("int64").T.values
    df["minute"] = hh * 60 + mm
    df = df[~df["param"].isin(DESCRIPTORS_2012)]
    w0 = df[(df["param"] == "Weight") & (df["minute"] == 0)]
    first = w0.groupby("stay_id")["line"].idxmin()
    df = df.drop(index=first.values)
    ev = df.merge(pd.DataFrame(spec_2012(config)), on="param")
    ev["v"] = (ev["value"] + ev["add"]) * ev["mul"]
    ev["hour"] = np.minimum(ev["minute"] // 60, 47)
    ev = ev[(ev["v"] >= ev["lo"]) & (ev["v"] <= ev["hi"])].sort_values(["stay_id", "line"])
    g = ev.groupby(["stay_id", "hour", "feature"], sort=False)
    agg = g.agg(agg=("agg", "first"), m=("v", "mean"), s=("v", "sum"), l=("v", "last"),
                n=("v", "size")).reset_index()
    agg["mean"] = np.where(agg["agg"] == "sum", agg["s"], np.where(agg["agg"] == "last", agg["l"],
                                                                   agg["m"]))
    agg[["stay_id", "hour", "feature", "mean", "n"]].to_parquet(out / "agg.parquet", index=False)
    return {"groups": len(agg), "rows": int(lines.sum()), "read_s": round(read_s, 3)}


RUNNERS = {"physionet2019": {"polars": run_polars, "pandas": run_pandas},
           "physionet2012": {"polars": run_polars_2012, "pandas": run_pandas_2012}}


def tool_command(fmt: str, tool: str, path: Path, out: Path, config: str | None) -> list[str]:
    """The measured process of `tool` on `path`."""
    if tool == "ehrjepa":
        cmd = [sys.executable, "-m", "ehrjepa", "preprocess", f"--{fmt}", str(path), "--out",
               str(out), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", "bench.preprocess_physionet", "--child", tool, "--format",
               fmt, "--input", str(path), "--out", str(out)]
    return cmd + (["--features", config] if config else [])


def child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    for a in ("--child", "--format", "--input", "--out", "--features"):
        p.add_argument(a, default=None)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    info = RUNNERS[a.format][a.child](Path(a.input), out, a.features)
    print(json.dumps({"tool": a.child, "inner_s": round(time.perf_counter() - t0, 3), **info}))
    return 0


# ----------------------------------------------------------------------------------------------
# agreement


def compare_labels(ours: Path, theirs: Path) -> dict:
    """ehrjepa's hour_labels.npy against a baseline's labels.parquet (stay_id, hour,
    sepsis_label): hours on one side only and labels that differ."""
    import pyarrow.parquet as pq

    from ehrjepa.data.processed import open_processed

    data = open_processed(ours)
    t = pq.read_table(theirs)
    sid = data.stays.column("stay_id").to_numpy()
    pos = np.searchsorted(sid, t.column("stay_id").to_numpy())
    pos = np.clip(pos, 0, len(sid) - 1)
    found = sid[pos] == t.column("stay_id").to_numpy()
    hour = t.column("hour").to_numpy()
    inside = found & (hour < data.n_hours[pos])
    row = data.offset[pos[inside]] + hour[inside]
    mine = data.hour_label("sepsis_label")
    differ = int((mine[row] != t.column("sepsis_label").to_numpy()[inside]).sum())
    return {"hours_ehrjepa": int(len(mine)), "hours_baseline": t.num_rows,
            "only_baseline": int((~inside).sum()), "label_mismatches": differ,
            "agree": bool(inside.all() and differ == 0 and t.num_rows == len(mine))}


# ----------------------------------------------------------------------------------------------
# the benchmark (called by bench/preprocess.py's main for these formats)


def main(args, parser: argparse.ArgumentParser) -> int:
    from bench import results as results_module
    from bench.common import fmt_bytes, machine_info, markdown_table, run_measured, write_json
    from bench.preprocess import compare_aggregations

    formats = [f.strip() for f in args.formats.split(",")]
    if len(formats) != 1:
        parser.error("a challenge format runs on its own: --format physionet2019")
    fmt = formats[0]
    if fmt not in RUNNERS:
        parser.error(f"--format {fmt}: not benchmarked yet (bench/preprocess_physionet.py has "
                     f"runners for {', '.join(RUNNERS)} only)")
    path = Path(args.input or DEFAULT_INPUT[fmt]).resolve()
    if not path.exists():
        parser.error(f"--input {path}: not found (the challenge's archive; see "
                     f"{DEFAULT_INPUT[fmt].parent}/NOTE.md)")
    from bench.preprocess import TOOLS as MIMIC_TOOLS

    asked = [t.strip() for t in args.tools.split(",")]
    if asked == list(MIMIC_TOOLS):  # the option's default: this format's tools
        asked = list(TOOLS)
    for t in asked:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r} for {fmt}; choose from {', '.join(TOOLS)}")
    tools = asked
    workdir = Path(args.workdir).resolve()
    if REPO in workdir.parents or workdir == REPO:
        parser.error(f"--workdir {workdir} is inside the repository; keep outputs outside")
    workdir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else workdir / f"preprocess-{fmt}.json"
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    results = {"machine": machine_info(), "args": {k: v for k, v in vars(args).items()},
               "input": str(path), "input_bytes": path.stat().st_size, "runs": [], "checks": []}
    for rep in range(args.repeat):
        for tool in tools:  # interleaved, so noise hits every tool alike
            out = workdir / "out" / f"{fmt}-{tool}"
            if out.exists():
                shutil.rmtree(out)
            m = run_measured(tool_command(fmt, tool, path, out, args.features), cwd=REPO,
                             timeout_s=args.timeout)
            run = {"format": fmt, "tool": tool, "repeat": rep, **m.as_dict()}
            if m.returncode == 0:
                if tool == "ehrjepa":
                    man = json.loads((out / "manifest.json").read_text())
                    run.update(rows=man["total"]["rows_read"], stays=man["n_stays"],
                               inner_s=man["seconds"]["total"])
                else:
                    run.update(json.loads(m.stdout.strip().splitlines()[-1]))
                log(f"{fmt} {tool:8} {m.wall_s:7.2f} s  {m.cpu_s:7.2f} cpu s  "
                    f"{fmt_bytes(m.peak_rss_bytes)}")
            else:
                run["error"] = m.stderr.strip().splitlines()[-1] if m.stderr.strip() else "failed"
                log(f"{fmt} {tool:8} FAILED (exit {m.returncode}):\n{m.stderr[-2000:]}")
            results["runs"].append(run)
            write_json(json_path, results)
    ours = workdir / "out" / f"{fmt}-ehrjepa"
    if not args.no_check and (ours / "manifest.json").exists():
        for tool in (t for t in tools if t != "ehrjepa"):
            theirs = workdir / "out" / f"{fmt}-{tool}"
            if not (theirs / "agg.parquet").exists():
                continue
            check = {"format": fmt, "baseline": tool,
                     **compare_aggregations(ours, theirs / "agg.parquet")}
            if (theirs / "labels.parquet").exists():  # the 2019 challenge's hourly labels
                check["labels"] = compare_labels(ours, theirs / "labels.parquet")
                check["agree"] = check["agree"] and check["labels"]["agree"]
            results["checks"].append(check)
            labels = (f", labels {check['labels']['label_mismatches']} mismatches"
                      if "labels" in check else "")
            log(f"check ehrjepa vs {tool}: {'agree' if check['agree'] else 'DISAGREE'} "
                f"({check['groups_ehrjepa']:,} vs {check['groups_baseline']:,} groups{labels})")
    best = {}
    for r in results["runs"]:
        if "error" not in r and (r["tool"] not in best or r["wall_s"] < best[r["tool"]]["wall_s"]):
            best[r["tool"]] = r
    fastest_baseline = min((r["wall_s"] for t, r in best.items() if t != "ehrjepa"), default=None)
    table = []
    for tool in tools:
        r = best.get(tool)
        if r is None:
            table.append([fmt, tool, "failed", "-", "-", "-", "-"])
            continue
        speed = f"{fastest_baseline / r['wall_s']:.2f}x" if fastest_baseline else "-"
        table.append([fmt, tool, f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                      fmt_bytes(r["peak_rss_bytes"]), str(r.get("read_s", "-")), speed])
    results["table"] = markdown_table(
        ["format", "tool", "wall s", "cpu s", "peak RSS", "baseline's tar read s",
         "vs the faster baseline"], table)
    record = results_module.destination(args.results, args.quick)
    if record:
        note = (f"{path.name}; best of {args.repeat}; load "
                f"{results['machine']['load_avg_1m']:.1f} at the start, {os.getloadavg()[0]:.1f} "
                f"at the end (1-min average, {results['machine']['cpus']} CPUs)")
        rows = [{"benchmark": "preprocess", "case": fmt, "shape": f"{r.get('rows', '')} rows"
                 if r.get("rows") else path.name, "tool": t, "wall_s": r["wall_s"],
                 "cpu_s": r["cpu_s"], "rss_mb": r["peak_rss_bytes"] / 2**20, "note": note}
                for t, r in best.items()]
        rows += [{"benchmark": "preprocess", "case": fmt, "tool": r["tool"],
                  "status": f"failed: {r['error']}", "note": note}
                 for r in results["runs"] if "error" in r and r["tool"] not in best]
        results_module.append_rows(rows, record, packages=("numba", "pyarrow", "isal", "polars",
                                                           "pandas"))
    write_json(json_path, results)
    mi = results["machine"]
    print(f"\nmachine: {mi['cpus']} CPUs, {mi['memory_gb']} GB, load {mi['load_avg_1m']:.1f}; "
          f"best of {args.repeat}; wall time of the whole process; input {path}\n")
    print(results["table"])
    for c in results["checks"]:
        labels = (f", {c['labels']['hours_ehrjepa']:,} / {c['labels']['hours_baseline']:,} "
                  "labelled hours" if "labels" in c else "")
        print(f"\nehrjepa vs {c['baseline']}: {'agree' if c['agree'] else 'DISAGREE'}: "
              f"{c['groups_ehrjepa']:,} / {c['groups_baseline']:,} groups{labels}")
        if not c["agree"]:
            print("  " + "; ".join(c["examples"][:6]))
    print(f"\nJSON: {json_path}")
    if record:
        print(f"rows appended to {record}")
    failed = [r for r in results["runs"] if "error" in r]
    return 1 if failed or any(not c["agree"] for c in results["checks"]) else 0


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        sys.exit(child(sys.argv[1:]))
    print("run it as: python -m bench preprocess --format physionet2019", file=sys.stderr)
    sys.exit(2)
