"""Patients simulated batch by batch, each batch from its own random stream, and every table
written as the batches come."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ehrjepa.synth.chartevents import chartevents
from ehrjepa.synth.diagnoses import diagnoses
from ehrjepa.synth.dictionaries import dictionary_tables
from ehrjepa.synth.labevents import labevents
from ehrjepa.synth.schemas import MODULE_OF, SCHEMAS
from ehrjepa.synth.stays import draw_patients, small_tables, stays_and_admissions
from ehrjepa.synth.writer import FORMATS, TableWriter

BATCH_PATIENTS = 500  # patients simulated per batch: bounds memory, fixes the random streams


def simulate_batch(seed: int, batch: int, n: int, first_labevent_id: int,
                   first_specimen: int, providers: list) -> dict:
    """All tables' rows for patients batch * BATCH_PATIENTS .. + n - 1, from their own stream."""
    rng = np.random.default_rng([seed, batch])
    pat = draw_patients(rng, batch * BATCH_PATIENTS, n)
    stays, adms = stays_and_admissions(rng, pat)
    tables = small_tables(rng, pat, stays, adms, providers)
    tables["chartevents"] = chartevents(rng, stays)
    tables["labevents"] = labevents(rng, pat, stays, adms, first_labevent_id, first_specimen,
                                    providers)
    # diagnoses from a stream of their own: the other tables do not depend on them
    tables["diagnoses_icd"] = diagnoses(np.random.default_rng([seed, batch, 1]), pat, stays,
                                        adms, tables["labevents"])
    return tables


def provider_pool(seed: int) -> list:
    """A pool of provider ids like MIMIC's (P + 5 letters or digits)."""
    rng = np.random.default_rng([seed, 1 << 30])
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return ["P" + "".join(c) for c in chars[rng.integers(0, 36, (400, 5))]]


def simulate_batches(patients: int, seed: int):
    """The tables of every batch, in order: `simulate_batch` with the id counters carried on."""
    providers = provider_pool(seed)
    next_labevent, next_specimen = 1, 0
    for batch in range(-(-patients // BATCH_PATIENTS)):
        n = min(BATCH_PATIENTS, patients - batch * BATCH_PATIENTS)
        tables = simulate_batch(seed, batch, n, next_labevent, next_specimen, providers)
        next_labevent += tables["labevents"].num_rows
        next_specimen += tables["labevents"].num_rows  # an upper bound on specimens
        yield tables


def check_arguments(patients: int, fmt: str, formats=FORMATS) -> None:
    """A ValueError naming the option for a format not in `formats` or fewer than 1 patient."""
    if fmt not in formats:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(formats)}")
    if patients < 1:
        raise ValueError(f"--patients must be at least 1, got {patients}")


def write_tables(out, patients: int, seed: int, fmt: str, progress: bool) -> tuple[dict, dict]:
    """Writes every table; returns (rows per table, seconds spent generating and writing, wall
    clock and CPU time of this process)."""
    from tqdm import tqdm

    check_arguments(patients, fmt)
    out = Path(out)
    writers = {}
    for name, schema in SCHEMAS.items():
        (out / MODULE_OF[name]).mkdir(parents=True, exist_ok=True)
        writers[name] = TableWriter(out / MODULE_OF[name] / f"{name}.{fmt}", schema, fmt)
    seconds = {"generate": 0.0, "write": 0.0, "generate_cpu": 0.0, "write_cpu": 0.0}
    try:
        for name, table in dictionary_tables().items():
            writers[name].write(table)
        bar = tqdm(total=-(-patients // BATCH_PATIENTS), desc="synth", unit="batch",
                   disable=not progress)
        t0, c0 = time.perf_counter(), time.process_time()
        for tables in simulate_batches(patients, seed):
            t1, c1 = time.perf_counter(), time.process_time()
            for name, table in tables.items():
                writers[name].write(table)
            t2, c2 = time.perf_counter(), time.process_time()
            seconds["generate"] += t1 - t0
            seconds["write"] += t2 - t1
            seconds["generate_cpu"] += c1 - c0
            seconds["write_cpu"] += c2 - c1
            bar.update()
            bar.set_postfix(chartevents=writers["chartevents"].rows)
            t0, c0 = time.perf_counter(), time.process_time()
        bar.close()
    finally:
        t2, c2 = time.perf_counter(), time.process_time()
        for w in writers.values():
            w.close()
        seconds["write"] += time.perf_counter() - t2
        seconds["write_cpu"] += time.process_time() - c2
    return {name: w.rows for name, w in writers.items()}, seconds


def write_synthetic(out, patients: int, seed: int = 0, fmt: str = "csv.gz",
                    progress: bool = True) -> dict:
    """Writes `patients` synthetic patients in the MIMIC-IV v2.2 layout under `out`, or with
    fmt="meds" as a MEDS dataset in `out` (see meds.py).

    Returns the number of rows written per table (name -> rows) or MEDS file group."""
    if fmt == "meds":
        from ehrjepa.synth.meds import write_meds
        return write_meds(out, patients, seed, progress)[0]
    return write_tables(out, patients, seed, fmt, progress)[0]
