"""`ehrjepa preprocess`: MIMIC-IV tables -> hourly per-stay arrays (format in processed.py).

The pipeline: stays (stays.py) from icustays, in-hospital death and readmissions from admissions
and patients, phenotypes from diagnoses_icd where present (outcomes.py), then each event table
streamed through the kernels (events.py holds the rules, drivers.py the threaded streaming)
into memory-mapped sums and counts, then means, the subject-level split and train-only
normalisation. Every input row is either kept or dropped for a named reason in OUT/manifest.json.
OUT is built beside its place and moved in whole (staging.py). The CLI (`configure`, `main`) is
here because `ehrjepa preprocess` maps to this module.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from .catalog import Catalog, load_catalog
from .drivers import ScanOptions, aggregate_table, finish_hours
from .events import CHART_REASONS, LAB_REASONS, REASONS, TABLES
from .outcomes import (admission_rows, known, load_phenotypes, normalise_codes, phenotypes,
                       readmit_30d, readmit_icu)
from .processed import (finish_outputs, open_outputs, split_of_subjects, write_manifest, write_meta,
                        write_stays)
from .readers import (KIND_INT, KIND_TIME, MISSING, TableStats, arrow_numpy, find_table,
                      read_table, read_text_table, table_columns)
from .staging import pause_point, staged_output
from .stays import Stays


def _table_entry(path, stats: TableStats, kept: int, dropped: dict) -> dict:
    dropped = {k: int(v) for k, v in dropped.items()}
    if stats.bad_line or "bad_line" in dropped:
        dropped["bad_line"] = dropped.get("bad_line", 0) + stats.bad_line
    entry = {"path": str(path), "rows_read": int(stats.rows_read), "rows_kept": int(kept),
             "dropped": dropped}
    if kept + sum(dropped.values()) != stats.rows_read:  # an accounting bug, never bad input
        raise AssertionError(f"{path}: rows kept {kept} + dropped {dropped} != read {stats.rows_read}")
    return entry


# columns read when the table has them: without them the outcomes they feed are -1 (a warning)
OPTIONAL = {"admissions": {"subject_id": KIND_INT, "admittime": KIND_TIME, "dischtime": KIND_TIME,
                           "deathtime": KIND_TIME},
            "patients": {"dod": KIND_TIME}}
DIAGNOSES = ("hadm_id", "icd_code", "icd_version")
DIAGNOSIS_REASONS = ("bad_id", "not_icd10", "no_code", "no_icu_stay")


def _read_with_optional(path: Path, name: str, on_bad_lines: str, stats: TableStats,
                        warnings: list[str]) -> dict[str, np.ndarray]:
    """TABLES[name]'s columns and those of OPTIONAL[name] the table has (MISSING where not)."""
    have = set(table_columns(path))
    optional = OPTIONAL[name]
    columns = TABLES[name][1] | {c: k for c, k in optional.items() if c in have}
    cols = read_table(path, columns, on_bad_lines, stats)
    n = len(next(iter(cols.values())))
    absent = [c for c in optional if c not in have]
    if absent:
        warnings.append(f"{path}: no column {', '.join(absent)}: readmission labels that need "
                        "it are -1 (unknown)")
    return cols | {c: np.full(n, MISSING, np.int64) for c in absent}


def _require(mimic_dir: Path, name: str) -> Path:
    module = TABLES[name][0]
    p = find_table(mimic_dir, module, name)
    if p is None:
        raise FileNotFoundError(f"{mimic_dir}/{module}/{name}.csv.gz (or .csv, .parquet) not found")
    return p


def _import_numba_math_without_scipy() -> None:
    """Import numba.np.arraymath with scipy hidden: saves 0.1-0.3 s of start-up.

    numba imports numba.np.arraymath on the first compiled call, and that module probes for BLAS
    by importing scipy.linalg, which is slow and which none of our kernels use. With scipy hidden
    the probe fails fast (numba then uses a plain loop for np.dot-free inner products only); the
    entry is removed right after, so later `import scipy` and numba's np.dot work as usual.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    key = "scipy" if "scipy" not in sys.modules else "scipy.linalg"
    sys.modules[key] = None
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules[key]


def preprocess(mimic_dir: str | Path, out: str | Path, config: str | Path | Catalog | None = None,
               on_bad_lines: str = "error", progress: bool = True, seed: int = 0,
               options: ScanOptions = ScanOptions(), phenotypes: str | Path | None = None) -> Path:
    """Turn MIMIC_DIR/{hosp,icu} tables into OUT (see processed.py); returns OUT.

    phenotypes: the phenotype file (default: the repository's configs/phenotypes.yaml).

    OUT is built in a temporary folder beside it and moved into place at the end (staging.py), so
    a run that fails or is killed leaves the previous OUT, or none, never a partial one.
    options: how event tables are scanned (drivers.ScanOptions; tests vary it)."""
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
    t_start = time.perf_counter()
    mimic_dir, out = Path(os.path.abspath(mimic_dir)), Path(out)
    if not mimic_dir.is_dir():
        raise FileNotFoundError(f"MIMIC-IV directory not found: {mimic_dir}")
    _import_numba_math_without_scipy()
    catalog = config if isinstance(config, Catalog) else load_catalog(config)
    pheno = load_phenotypes(phenotypes)
    with staged_output(out) as tmp:
        _build(mimic_dir, tmp, catalog, on_bad_lines, progress, seed, t_start, options, pheno)
    return out


def _build(mimic_dir: Path, out: Path, catalog: Catalog, on_bad_lines: str, progress: bool,
           seed: int, t_start: float, options: ScanOptions,
           pheno: tuple[dict, Path]) -> None:
    """Write the processed format into the (empty, temporary) folder `out`."""
    names = catalog.names
    n_features = len(names)
    paths = {name: _require(mimic_dir, name) for name in ("patients", "admissions", "icustays",
                                                            "labevents")}
    paths["chartevents"] = find_table(mimic_dir, "icu", "chartevents")
    warnings: list[str] = []
    if paths["chartevents"] is None:
        msg = (f"{mimic_dir}/icu/chartevents.csv.gz (or .csv, .parquet) not found: "
               "no vital signs, labs only")
        warnings.append(msg)
        print(f"ehrjepa preprocess: warning: {msg}", file=sys.stderr)
        del paths["chartevents"]
    manifest_tables: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    # ---- stays
    t0 = time.perf_counter()
    st = TableStats(str(paths["icustays"]))
    cols = read_table(paths["icustays"], TABLES["icustays"][1], on_bad_lines, st)
    stay_drops = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0, "duplicate_stay": 0}
    stays = Stays(cols, st, stay_drops)
    manifest_tables["icustays"] = _table_entry(paths["icustays"], st, len(stays), stay_drops)
    seconds["icustays"] = time.perf_counter() - t0

    # ---- admissions: in-hospital death of each stay's admission
    t0 = time.perf_counter()
    st = TableStats(str(paths["admissions"]))
    adm = _read_with_optional(paths["admissions"], "admissions", on_bad_lines, st, warnings)
    row = admission_rows(adm["hadm_id"], stays.hadm_id)
    flag = adm["hospital_expire_flag"][np.maximum(row, 0)] if len(row) and len(adm["hadm_id"]) \
        else np.zeros(len(stays), np.int64)
    death = np.where((row >= 0) & (flag >= 0) & (flag <= 1), flag, -1).astype(np.int8)
    n_unknown = int((death < 0).sum())
    if n_unknown:
        warnings.append(f"{n_unknown} stays have no admission with a 0/1 hospital_expire_flag "
                        "in admissions: death_hosp = -1 (unknown)")
    used = np.isin(adm["hadm_id"], stays.hadm_id)
    manifest_tables["admissions"] = _table_entry(paths["admissions"], st, int(used.sum()),
                                                 {"no_icu_stay": int((~used).sum())})
    seconds["admissions"] = time.perf_counter() - t0

    # ---- patients: count who has an ICU stay; warn about stays of unknown subjects
    st = TableStats(str(paths["patients"]))
    pat = _read_with_optional(paths["patients"], "patients", on_bad_lines, st, warnings)
    used = np.isin(pat["subject_id"], stays.subject_id)
    manifest_tables["patients"] = _table_entry(paths["patients"], st, int(used.sum()),
                                               {"no_icu_stay": int((~used).sum())})
    n_orphans = int((~np.isin(stays.subject_id, pat["subject_id"])).sum())
    if n_orphans:
        warnings.append(f"{n_orphans} stays belong to subjects missing from patients")

    # ---- outcomes: readmissions (admissions, patients.dod), phenotypes (diagnoses_icd)
    t0 = time.perf_counter()
    adm_died = np.where((adm["hospital_expire_flag"] >= 0) & (adm["hospital_expire_flag"] <= 1),
                        adm["hospital_expire_flag"], -1)
    labels = {"readmit_icu": readmit_icu(stays.hadm_id, stays.intime, stays.outtime,
                                         adm["hadm_id"], adm["deathtime"]),
              "readmit_30d": readmit_30d(stays.hadm_id, adm["subject_id"], adm["hadm_id"],
                                         adm["admittime"], adm["dischtime"], adm_died,
                                         pat["subject_id"], pat["dod"])}
    pheno_info = {"path": os.path.abspath(pheno[1]), "names": list(pheno[0])}
    dx_path = find_table(mimic_dir, "hosp", "diagnoses_icd")
    if dx_path is None:
        pheno_info["note"] = (f"{mimic_dir}/hosp/diagnoses_icd.csv.gz (or .csv, .parquet) not "
                              "found: no phenotype columns")
    else:
        st = TableStats(str(dx_path))
        dx_hadm, dx_code, dx_dropped = _read_diagnoses(dx_path, stays, on_bad_lines, st)
        manifest_tables["diagnoses_icd"] = _table_entry(dx_path, st, len(dx_hadm), dx_dropped)
        if st.rows_read:
            labels |= phenotypes(stays.hadm_id, dx_hadm, dx_code, pheno[0])
        else:
            pheno_info["note"] = f"{dx_path}: no data rows: no phenotype columns"
    seconds["outcomes"] = time.perf_counter() - t0

    # ---- events
    sums, counts = open_outputs(out, stays.total_hours, n_features)
    for name in ("chartevents", "labevents"):
        if name not in paths:
            continue
        t0 = time.perf_counter()
        path = paths[name]
        st = TableStats(str(path))
        dropped = np.zeros(len(REASONS), np.int64)
        kept = aggregate_table(name, path, catalog.lookup(name), stays, sums, counts,
                               on_bad_lines, st, dropped, progress, options)
        if st.rows_read == 0:
            msg = f"{path}: no data rows (header only?): no {name} events"
            warnings.append(msg)
            print(f"ehrjepa preprocess: warning: {msg}", file=sys.stderr)
        pause_point("scan")
        reasons = CHART_REASONS if name == "chartevents" else LAB_REASONS
        manifest_tables[name] = _table_entry(path, st, kept,
                                             {r: int(dropped[REASONS.index(r)]) for r in reasons})
        seconds[name] = time.perf_counter() - t0

    # ---- split, means, train-only normalisation
    t0 = time.perf_counter()
    split = split_of_subjects(stays.subject_id, seed)
    finish_and_write(out, stays, split, death, names, seed, sums, counts, labels)
    del sums, counts
    seconds["finalize"] = time.perf_counter() - t0

    # ---- manifest.json
    manifest = {"tables": manifest_tables, "warnings": warnings, "n_stays": len(stays),
                "total_hours": stays.total_hours, "phenotypes": pheno_info,
                "labels": label_counts(labels),
                "config": os.path.abspath(catalog.path) if catalog.path else None,
                "seconds": {k: round(v, 3) for k, v in seconds.items()}
                | {"total": round(time.perf_counter() - t_start, 3)}}
    write_manifest(out, manifest)


def _read_diagnoses(path: Path, stays: Stays, on_bad_lines: str, stats: TableStats
                    ) -> tuple[np.ndarray, "pyarrow.Array", dict[str, int]]:  # noqa: F821
    """(hadm_id, normalised icd_code) of the ICD-10 rows of the stays' admissions, and the rows
    dropped by reason (DIAGNOSIS_REASONS)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = read_text_table(path, list(DIAGNOSES), on_bad_lines, stats)
    hadm = arrow_numpy(cols["hadm_id"], KIND_INT, path, "hadm_id")
    version = arrow_numpy(cols["icd_version"], KIND_INT, path, "icd_version")
    code = normalise_codes(cols["icd_code"])
    no_code = pc.equal(code, "").to_numpy(zero_copy_only=False)
    bad_id = ~known(hadm)
    not_10 = ~bad_id & (version != 10)
    no_code &= ~bad_id & ~not_10
    no_stay = ~bad_id & ~not_10 & ~no_code & ~np.isin(hadm, stays.hadm_id)
    keep = ~(bad_id | not_10 | no_code | no_stay)
    dropped = dict(zip(DIAGNOSIS_REASONS, (int(m.sum()) for m in (bad_id, not_10, no_code, no_stay))))
    return hadm[keep], code.filter(pa.array(keep)), dropped


def label_counts(labels: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """{label: {"1": stays, "0": stays, "-1": stays}} for the manifest."""
    return {k: {str(v): int((x == v).sum()) for v in (1, 0, -1)} for k, x in labels.items()}


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel preprocessing uses, with the argument
    types of a real run: preprocess a tiny MIMIC-shaped directory once from csv (the fused
    scan_events path and the column path) and once from parquet (scan_arrow)."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .readers import compile_kernels as compile_tables

    compile_tables()
    _import_numba_math_without_scipy()
    tables = {
        ("hosp", "patients"): "subject_id,gender\n1,F\n",
        ("hosp", "admissions"): "subject_id,hadm_id,hospital_expire_flag\n1,100,0\n",
        ("icu", "icustays"): "subject_id,hadm_id,stay_id,intime,outtime\n"
                             "1,100,10,2150-01-01 00:00:00,2150-01-01 05:00:00\n",
        ("hosp", "labevents"): "subject_id,itemid,charttime,valuenum\n"
                               "1,50912,2150-01-01 01:00:00,1.5\n",
        ("icu", "chartevents"): "stay_id,itemid,charttime,valuenum\n"
                                "10,220045,2150-01-01 01:00:00,80\n",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mimic"
        for (module, name), text in tables.items():
            (root / module).mkdir(parents=True, exist_ok=True)
            (root / module / f"{name}.csv").write_text(text)
        for fused in (True, False):
            preprocess(root, Path(tmp) / "out", progress=False,
                       options=ScanOptions(fused_csv=fused))
        ts = pa.timestamp("ms")
        for module, name, key in (("icu", "chartevents", "stay_id"),
                                  ("hosp", "labevents", "subject_id")):
            (root / module / f"{name}.csv").unlink()
            pq.write_table(pa.table({key: pa.array([10 if key == "stay_id" else 1, None]),
                                     "itemid": pa.array([220045, 50912]),
                                     "charttime": pa.array([7_574_256_000_000, None], ts),
                                     "valuenum": pa.array([80.0, None])}),
                           root / module / f"{name}.parquet")
        # and with each 2-row batch split over two threads (apply_events_in)
        preprocess(root, Path(tmp) / "out", progress=False, options=ScanOptions(parallel_rows=1))


# -------------------------------------------------------------------------------------------------
# CLI


def finish_and_write(out: Path, stays: Stays, split: np.ndarray, death: np.ndarray, names: list[str],
                     seed: int, sums: np.ndarray, counts: np.ndarray,
                     labels: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The end both pipelines (MIMIC tables, MEDS shards) share: hourly sums become means,
    normalisation statistics come from train hours only, and mean.npy, count.npy, stays.parquet
    (with the outcome `labels`, int8 per stay) and features.json are written into `out`. Returns
    the events kept per feature."""
    hour_train = np.repeat(split == 0, stays.n_hours).astype(np.uint8)
    norm_mean, norm_std, kept_by_feature = finish_hours(sums, counts, hour_train)
    finish_outputs(out, sums, counts)
    write_stays(out, stays, split, death, labels or {})
    write_meta(out, names, norm_mean, norm_std, seed)
    pause_point("write")
    return kept_by_feature


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mimic-dir", help="MIMIC-IV directory holding hosp/ and icu/ (default: none; this "
                             "or --meds)")
    source.add_argument("--meds", metavar="DIR",
                        help="a MEDS dataset (data/**/*.parquet, metadata/) instead of MIMIC-IV "
                             "tables; codes map to features by the catalog's meds templates "
                             "(default: none)")
    parser.add_argument("--out", required=True,
                        help="output directory (replaced whole when the run succeeds)")
    parser.add_argument("--features", default=None,
                        help="feature catalog (default: the repository's configs/features.yaml)")
    parser.add_argument("--phenotypes", default=None, metavar="PATH",
                        help="ICD-10 prefixes per phenotype label (default: the repository's "
                             "configs/phenotypes.yaml); used where the data has diagnoses")
    parser.add_argument("--config", default=None,
                        help="deprecated alias of --features (default: none)")
    parser.add_argument("--on-bad-lines", choices=("error", "skip"), default="error",
                        help="malformed CSV rows: stop with the line number, or skip and count "
                             "them (default: error)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subject-level split (default: 0)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: bars for tables that take a while)")


def main(args: argparse.Namespace) -> int:
    features = args.features
    if args.config is not None:
        if features is not None:
            print("ehrjepa preprocess: give --features only (--config is its deprecated alias)",
                  file=sys.stderr)
            return 2
        print("ehrjepa preprocess: warning: --config is deprecated here, use --features",
              file=sys.stderr)
        features = args.config
    try:
        if args.meds is not None:
            from .meds import preprocess_meds

            out = preprocess_meds(args.meds, args.out, config=features,
                                  progress=not args.no_progress, seed=args.seed,
                                  phenotypes=args.phenotypes)
        else:
            out = preprocess(args.mimic_dir, args.out, config=features,
                             on_bad_lines=args.on_bad_lines, progress=not args.no_progress,
                             seed=args.seed, phenotypes=args.phenotypes)
    except (OSError, ValueError) as e:
        print(f"ehrjepa preprocess: {e}", file=sys.stderr)
        return 1
    m = json.loads((out / "manifest.json").read_text())
    print(f"{out}: {m['n_stays']} stays, {m['total_hours']} hours, "
          f"{m['seconds']['total']:.2f} s")
    for name, t in m["tables"].items():
        drops = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "none"
        print(f"  {name:13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  dropped: {drops}")
    if "total" in m:  # MEDS: the shards' sum, and where stays and splits came from
        t = m["total"]
        drops = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "none"
        print(f"  {'total':13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  dropped: {drops}")
        print(f"  stays paired by {m['icu_stays']['paired_by']}; splits from {m['split_source']}")
        t = m["diagnoses"]
        if t["rows_read"]:
            drops = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "none"
            print(f"  {'diagnoses':13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  dropped: {drops}")
    labels = ", ".join(f"{k} {v['1']}/{v['0']}/{v['-1']}" for k, v in m["labels"].items())
    print(textwrap.fill(f"labels (stays 1/0/-1): {labels}", 100, initial_indent="  ",
                        subsequent_indent="    "))
    if "note" in m["phenotypes"]:
        print(f"  note: {m['phenotypes']['note']}")
    for w in m["warnings"]:
        print(f"  warning: {w}")
    return 0
