"""`ehrjepa preprocess`: a source's files -> hourly per-stay arrays (format in processed.py).

Sources, one module each in build.py's shape: MIMIC-IV tables (mimic.py), a MEDS dataset
(meds.py), the PhysioNet/CinC 2012 challenge (physionet2012.py) and the 2019 challenge
(physionet2019.py). build.py runs any of them: the catalog, staging (OUT built beside its place
and moved in whole), the split (`--splits FILE`, the source's own, or the seeded subject hash),
the format and the manifest, where every input row is either kept or dropped for a named reason.
The CLI (`configure`, `main`) is here because `ehrjepa preprocess` maps to this module.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from .build import build
from .catalog import Catalog
from .drivers import ScanOptions


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
               options: ScanOptions = ScanOptions(), phenotypes: str | Path | None = None,
               splits: str | Path | None = None) -> Path:
    """Turn MIMIC_DIR/{hosp,icu} tables into OUT (see processed.py); returns OUT.

    The MIMIC-IV source (mimic.py) through the shared run (build.py). phenotypes: the phenotype
    file (default: the repository's configs/phenotypes.yaml); splits: a --splits file.
    options: how event tables are scanned (drivers.ScanOptions; tests vary it)."""
    from .mimic import MimicSource

    _import_numba_math_without_scipy()
    source = MimicSource(mimic_dir, on_bad_lines, options, phenotypes)
    return build(source, out, config, seed, splits, progress)


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


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mimic-dir", help="MIMIC-IV directory holding hosp/ and icu/; one "
                        "source is required: this, --meds, --physionet2012 or --physionet2019 "
                        "(default: none)")
    source.add_argument("--meds", metavar="DIR",
                        help="a MEDS dataset (data/**/*.parquet, metadata/) instead of MIMIC-IV "
                             "tables; codes map to features by the catalog's meds templates "
                             "(default: none)")
    source.add_argument("--physionet2012", metavar="PATH", nargs="+",
                        help="the PhysioNet/CinC 2012 challenge: set folders (set-a/), set "
                             "tarballs (set-a.tar.gz, read without unpacking) or a folder "
                             "holding them, with their Outcomes-*.txt (default: none)")
    source.add_argument("--physionet2019", metavar="PATH", nargs="+",
                        help="the PhysioNet/CinC 2019 challenge: folders of .psv files, or "
                             ".tar.gz / .zip archives of them (default: none)")
    parser.add_argument("--out", required=True,
                        help="output directory (replaced whole when the run succeeds; an "
                             "existing one must be a processed folder)")
    parser.add_argument("--splits", metavar="FILE", default=None,
                        help="CSV or parquet with columns stay_id (or subject_id) and split "
                             "(train/val/test); every stay must be listed (default: the source's "
                             "own splits where it has them, else a seeded 80/10/10 subject hash)")
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


def make_source(args: argparse.Namespace):
    """The source object (build.py's shape) that the command line names."""
    if args.meds is not None:
        from .meds import MedsSource

        return MedsSource(args.meds, phenotypes=args.phenotypes)
    if args.physionet2012 is not None:
        from .physionet2012 import Physionet2012Source

        return Physionet2012Source(args.physionet2012, on_bad_lines=args.on_bad_lines)
    if args.physionet2019 is not None:
        from .physionet2019 import Physionet2019Source

        return Physionet2019Source(args.physionet2019, on_bad_lines=args.on_bad_lines)
    from .mimic import MimicSource

    return MimicSource(args.mimic_dir, args.on_bad_lines, phenotypes=args.phenotypes)


def _drops(t: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "none"


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
        _import_numba_math_without_scipy()
        out = build(make_source(args), args.out, features, args.seed, args.splits,
                    progress=not args.no_progress)
    except (OSError, ValueError) as e:
        print(f"ehrjepa preprocess: {e}", file=sys.stderr)
        return 1
    m = json.loads((out / "manifest.json").read_text())
    print(f"{out}: {m['n_stays']} stays, {m['total_hours']} hours, "
          f"{m['seconds']['total']:.2f} s")
    for name, t in m["tables"].items():
        print(f"  {name:13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  "
              f"dropped: {_drops(t)}")
    if "total" in m:  # MEDS and the challenges: the sum over shards / files
        t = m["total"]
        print(f"  {'total':13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  "
              f"dropped: {_drops(t)}")
    if "icu_stays" in m:
        print(f"  stays paired by {m['icu_stays']['paired_by']}")
    if m.get("diagnoses", {}).get("rows_read"):
        t = m["diagnoses"]
        print(f"  {'diagnoses':13s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  "
              f"dropped: {_drops(t)}")
    print(f"  splits from {m['split_source']}: " + ", ".join(
        f"{k} {v}" for k, v in m["split_counts"].items()))
    labels = ", ".join(f"{k} {v['1']}/{v['0']}/{v['-1']}" for k, v in m["labels"].items())
    print(textwrap.fill(f"labels (stays 1/0/-1): {labels}", 100, initial_indent="  ",
                        subsequent_indent="    "))
    if "note" in m.get("phenotypes", {}):
        print(f"  note: {m['phenotypes']['note']}")
    for w in m["warnings"]:
        print(f"  warning: {w}")
    return 0
