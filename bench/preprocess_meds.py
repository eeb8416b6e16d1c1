"""The MEDS side of the preprocessing benchmark: input and baselines for `--formats meds`.

    python -m bench preprocess --formats meds [--rows 5000000] [--tools ehrjepa,duckdb,polars]

The input is the synthetic cohort written as a MEDS dataset (`ehrjepa synth --format meds`,
data/{train,tuning,held_out}/K.parquet), sized so the data shards hold about `rows` events in
all (every MEDS row counts: vital signs, lab results, specimen collections, admissions, ...).
ehrjepa runs `preprocess_meds`; DuckDB and polars do the same aggregation on the same shards,
following the rules of ehrjepa/data/events.py (scan_meds) and ehrjepa/data/meds.py:

  - codes -> features by the catalog's `meds` templates (a regex per table, tried in the order
    chartevents, labevents; the itemid the template captures must be in that table's catalog),
    with the catalog's conversion and inclusive valid range; a null or NaN numeric_value and a
    null time are dropped;
  - stays: ICU_ADMISSION[//...] and ICU_DISCHARGE[//...] rows paired by icustay_id (the first
    of each in file order; shards in sorted path order), subject of the admission row; stays
    with outtime <= intime get nothing;
  - a chartevents code with an icustay_id goes to that stay, [intime - 6 h, outtime); any other
    feature row goes, like a lab, to the subject's stay whose window holds its time: a stay whose
    [intime, outtime) holds it wins, else the earliest (intime, then stay id);
  - hour = floor((time - intime) / 1 h), 0 for the look-back; mean and count per
    (stay, hour, feature), written to OUT/agg.parquet.

Times are whole seconds since the epoch (floor of the microseconds), as the library reads them.
The baselines need the icustay_id column (MIMIC_IV_MEDS and our synth write it).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.preprocess import LOOKBACK_S, calibrated_patients, catalog_rows

GENERATOR = "ehrjepa.synth-meds"
STAY_PREFIXES = ("ICU_ADMISSION", "ICU_DISCHARGE")


def shards(meds_dir: Path) -> list[str]:
    """The data shards, in the library's order (sorted paths)."""
    found = sorted((Path(meds_dir) / "data").rglob("*.parquet"))
    if not found:
        raise FileNotFoundError(f"{meds_dir}/data/**/*.parquet: no MEDS data shards found")
    return [str(p) for p in found]


def code_spec(config: str | Path | None) -> dict[str, list]:
    """Columns of the catalog as the baselines join it: per (code template, itemid) the
    template's regex (anchored), its priority (templates in the library's order), feature, add,
    mul, lo, hi."""
    from ehrjepa.data.catalog import TABLES, load_catalog, meds_pattern

    templates = load_catalog(config).meds
    cols = {k: [] for k in ("pattern", "prio", "chart", "itemid", "feature", "add", "mul", "lo", "hi")}
    for prio, (table, template) in enumerate((t, tpl) for t in TABLES if t in templates
                                             for tpl in templates[t]):
        pattern = "^" + meds_pattern(template).pattern + "$"
        for itemid, feature, add, mul, lo, hi in zip(*catalog_rows(config, table)):
            for k, v in zip(cols, (pattern, prio, table == "chartevents", itemid, feature, add,
                                   mul, lo, hi)):
                cols[k].append(v)
    return cols


# ----------------------------------------------------------------------------------------------
# input data

def make_meds_input(workdir: Path, rows: int, seed: int = 0, log=print) -> tuple[Path, dict]:
    """A MEDS dataset of the synthetic cohort with about `rows` events; reused if present."""
    from ehrjepa.synth.meds import write_meds

    d = workdir / "data" / f"{GENERATOR}-{rows}-seed{seed}" / "meds"
    info_path = d.parent / "bench_input.json"
    if info_path.exists() and d.is_dir():
        return d, json.loads(info_path.read_text())
    patients = patients_for_events(workdir, rows, seed, log)
    if d.exists():
        shutil.rmtree(d)
    log(f"writing meds input: {patients} patients (~{rows:,} events) -> {d}")
    t0 = time.perf_counter()
    counts = write_meds(d, patients, seed=seed, progress=True)[0]
    events = sum(v for k, v in counts.items() if k.startswith("data/"))
    info = {"generator": GENERATOR, "patients": patients, "seed": seed, "format": "meds",
            "rows": {"events": int(events)}, **{k: int(v) for k, v in counts.items()},
            "input_bytes": sum(Path(p).stat().st_size for p in shards(d)),
            "write_s": round(time.perf_counter() - t0, 2)}
    info_path.write_text(json.dumps(info, indent=2))
    return d, info


def patients_for_events(workdir: Path, rows: int, seed: int, log) -> int:
    """Patient count giving about `rows` MEDS events, from a small calibration run."""
    from ehrjepa.synth.meds import write_meds

    def meds_events(out: Path, patients: int) -> int:
        counts = write_meds(out, patients, seed=seed, progress=False)[0]
        return sum(v for k, v in counts.items() if k.startswith("data/"))

    return calibrated_patients(workdir / "data" / f"calibration-synth-meds-{seed}", rows,
                               meds_events, "MEDS events", log)


# ----------------------------------------------------------------------------------------------
# the tools (each in its own child process, see bench/preprocess.py's run_child)

def run_ehrjepa(meds_dir: Path, out: Path, config: str | None) -> int:
    from ehrjepa.data.meds import preprocess_meds
    preprocess_meds(meds_dir, out, config=config, progress=False)
    return int(json.loads((out / "manifest.json").read_text())["total_hours"])


def run_duckdb(meds_dir: Path, out: Path, config: str | None) -> int:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    spec = code_spec(config)
    con.register("spec_arrow", pa.table({
        **spec, "itemid": pa.array(spec["itemid"], pa.int64()),
        "lo": pa.array(spec["lo"], pa.float64()), "hi": pa.array(spec["hi"], pa.float64())}))
    files = "[" + ", ".join(f"'{p}'" for p in shards(meds_dir)) + "]"
    data = f"read_parquet({files}, file_row_number = true)"  # and the virtual column file_index
    row = "(file_index::BIGINT << 40) + file_row_number"  # a row's place in the shards' order
    # the dataset's codes that name a feature (first table whose template and catalog match)
    con.execute(f"""
      create temp table code_map as
      with codes as (select distinct code from read_parquet({files}) where code is not null)
      select c.code, s.chart, s.feature, s.add, s.mul, s.lo, s.hi
      from codes c join spec_arrow s
        on regexp_full_match(c.code, s.pattern)
       and try_cast(regexp_extract(c.code, s.pattern, 1) as BIGINT) = s.itemid
      qualify row_number() over (partition by c.code order by s.prio) = 1""")
    is_stay = " or ".join(f"code = '{p}' or starts_with(code, '{p}//')" for p in STAY_PREFIXES)
    con.execute(f"""
      create temp table stays as
      with ev as (
        select subject_id, epoch_us(time) // 1000000 as t, icustay_id,
               code = 'ICU_ADMISSION' or starts_with(code, 'ICU_ADMISSION//') as is_start
        from {data}
        where ({is_stay}) and icustay_id is not null
        qualify row_number() over (partition by icustay_id, is_start
                                   order by {row}) = 1)
      select s.icustay_id as stay_id, s.subject_id, s.t as t_in, e.t as t_out
      from ev s join ev e on s.icustay_id = e.icustay_id and s.is_start and not e.is_start
      where s.subject_id is not null and e.t > s.t""")
    con.execute(f"""
      copy (
        with ev as (
          select d.subject_id, d.icustay_id, {row.replace("file_", "d.file_")} as row,
                 epoch_us(d.time) // 1000000 as t, m.feature, m.chart and d.icustay_id is not null as by_stay,
                 (d.numeric_value::DOUBLE + m.add) * m.mul as v, m.lo, m.hi
          from {data} d join code_map m on d.code = m.code
          where d.time is not null and d.numeric_value is not null and not isnan(d.numeric_value)),
        kept as (select * from ev where v between lo and hi),
        chart as (
          select st.stay_id, k.t, st.t_in, k.feature, k.v
          from kept k join stays st on k.icustay_id = st.stay_id
          where k.by_stay and k.t >= st.t_in - {LOOKBACK_S} and k.t < st.t_out),
        lab as (
          select st.stay_id, k.t, st.t_in, k.feature, k.v
          from kept k join stays st on k.subject_id = st.subject_id
            and k.t >= st.t_in - {LOOKBACK_S} and k.t < st.t_out
          where not k.by_stay
          qualify row_number() over (partition by k.row
                                     order by (k.t >= st.t_in) desc, st.t_in, st.stay_id) = 1),
        events as (select * from chart union all select * from lab)
        select stay_id, greatest((t - t_in) // 3600, 0)::BIGINT as hour, feature,
               avg(v) as mean, count(*)::BIGINT as n
        from events group by all
      ) to '{out / "agg.parquet"}' (format parquet)""")
    return con.execute(f"select count(*) from '{out / 'agg.parquet'}'").fetchone()[0]


def run_polars(meds_dir: Path, out: Path, config: str | None) -> int:
    import polars as pl

    files = shards(meds_dir)
    data = pl.scan_parquet(files).select("subject_id", "time", "code", "numeric_value",
                                         "icustay_id").with_row_index("row")
    spec = pl.DataFrame(code_spec(config), schema_overrides={
        "itemid": pl.Int64, "lo": pl.Float64, "hi": pl.Float64, "add": pl.Float64,
        "mul": pl.Float64})
    codes = data.select(pl.col("code").unique()).drop_nulls().collect()
    parts = []
    for pattern in spec["pattern"].unique(maintain_order=True):
        s = spec.filter(pl.col("pattern") == pattern)
        parts.append(codes.with_columns(pl.col("code").str.extract(pattern, 1)
                                        .cast(pl.Int64, strict=False).alias("itemid"))
                     .join(s, on="itemid"))
    code_map = (pl.concat(parts).sort("prio").unique("code", keep="first")
                .select("code", "chart", "feature", "add", "mul", "lo", "hi").lazy())

    secs = (pl.col("time").cast(pl.Int64) // 1_000_000).alias("t")  # timestamp[us]
    starts = pl.col("code").is_in(["ICU_ADMISSION"]) | pl.col("code").str.starts_with("ICU_ADMISSION//")
    stay_rows = pl.lit(False)
    for p in STAY_PREFIXES:
        stay_rows = stay_rows | (pl.col("code") == p) | pl.col("code").str.starts_with(p + "//")
    ev = (data.filter(stay_rows & pl.col("icustay_id").is_not_null())
          .with_columns(secs, starts.alias("is_start"))
          .sort("row").unique(["icustay_id", "is_start"], keep="first", maintain_order=True))
    stays = (ev.filter("is_start").select("icustay_id", "subject_id", pl.col("t").alias("t_in"))
             .join(ev.filter(~pl.col("is_start")).select("icustay_id", pl.col("t").alias("t_out")),
                   on="icustay_id")
             .rename({"icustay_id": "stay_id"})
             .filter(pl.col("subject_id").is_not_null() & (pl.col("t_out") > pl.col("t_in")))
             .collect().lazy())

    v = ((pl.col("numeric_value").cast(pl.Float64) + pl.col("add")) * pl.col("mul")).alias("v")
    kept = (data.join(code_map, on="code")
            .filter(pl.col("time").is_not_null() & pl.col("numeric_value").is_not_null()
                    & ~pl.col("numeric_value").is_nan())
            .with_columns(secs, v, (pl.col("chart") & pl.col("icustay_id").is_not_null()).alias("by_stay"))
            .filter(pl.col("v").is_between(pl.col("lo"), pl.col("hi"))))
    window = (pl.col("t") >= pl.col("t_in") - LOOKBACK_S) & (pl.col("t") < pl.col("t_out"))
    chart = (kept.filter("by_stay").join(stays.drop("subject_id"), left_on="icustay_id",
                                         right_on="stay_id")
             .filter(window).select(pl.col("icustay_id").alias("stay_id"), "t", "t_in", "feature", "v"))
    lab = (kept.filter(~pl.col("by_stay")).join(stays, on="subject_id").filter(window)
           .with_columns((pl.col("t") < pl.col("t_in")).alias("before"))
           .sort(["row", "before", "t_in", "stay_id"])
           .unique(subset="row", keep="first", maintain_order=False)
           .select("stay_id", "t", "t_in", "feature", "v"))
    agg = (pl.concat([chart, lab])
           .with_columns(((pl.col("t") - pl.col("t_in")) // 3600).clip(lower_bound=0).alias("hour"))
           .group_by("stay_id", "hour", "feature")
           .agg(pl.col("v").mean().alias("mean"), pl.len().cast(pl.Int64).alias("n"))
           .collect())
    agg.write_parquet(out / "agg.parquet")
    return agg.height


RUNNERS = {"ehrjepa": run_ehrjepa, "duckdb": run_duckdb, "polars": run_polars}
