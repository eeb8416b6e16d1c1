"""`ehrjepa synth`: synthetic ICU data in the exact MIMIC-IV v2.2 schema.

    ehrjepa synth --out DIR --patients N [--seed S] [--format csv.gz|csv|parquet|meds]

writes DIR/hosp/{patients,admissions,labevents,d_labitems,diagnoses_icd,d_icd_diagnoses}.EXT
and DIR/icu/{icustays,chartevents,d_items}.EXT with MIMIC-IV v2.2's column names, order and types
(the types pyarrow infers from the public demo's CSV files; chartevents as in the v2.2 docs).
CSV timestamps read "YYYY-MM-DD HH:MM:SS", dates "YYYY-MM-DD", empty fields are empty and only
fields that need it are quoted, as in the real files. Parquet holds the same columns with
timestamp[ms] times (Parquet has no seconds unit) and date32 `dod`. Output is deterministic:
the same seed, patient count and format give the same bytes. Patients are simulated in batches
of BATCH_PATIENTS (in batches.py) with their own random streams, so a run of k full batches is
the start of any longer run with the same seed. Generation is vectorised numpy (loops over
hours of the latent path only); tables are streamed out batch by batch (pyarrow.csv, ISA-L
igzip level 1 for csv.gz, pyarrow.parquet with zstd and one row group per batch), so memory
stays bounded.

--format meds writes the same events as a MEDS dataset instead (DIR/data/, DIR/metadata/, codes
as MIMIC_IV_MEDS writes them; see ehrjepa/synth/meds.py).

The latent severity model and its outcomes (death, length of stay, a second ICU stay, a
readmission within 30 days) are described in ehrjepa/synth/severity.py; the diagnoses drawn
from it (ICD-10-CM: sepsis, acute kidney injury, acute respiratory failure, heart failure,
shock, and chronic conditions as noise) in ehrjepa/synth/diagnoses.py.

What is observed: vitals are linear in x_s(hour) plus per-stay offsets and noise (heart rate
and respiratory rate rise, blood pressure and SpO2 fall, temperature rises, GCS falls); sicker
stays get arterial lines, ventilation (FiO2, total respiratory rate) and extra sub-hourly
readings; labs are drawn every 4-24 h (more often when sicker) in panels with about a third of
the items missing per draw, with values driven by x_s at the draw (clamped to the stay for draws
on the ward or in the ED before the ICU) and per-patient baselines.

Dirty rows, as in the real data: out-of-range values (decimal slips, Fahrenheit charted as
Celsius, FiO2 as a fraction), text in `value` with an empty `valuenum`, labs without hadm_id
(ED draws just before ICU intime, outpatient draws, a few others), chart rows just before intime
and just after outtime, and unrelated itemids (alarms, assessments) that a pipeline must drop.

Modules: schemas (table layouts), dictionaries (items, vocabularies, ICD-10-CM codes), columns
(arrow columns), severity (the latent model), stays, chartevents, labevents and diagnoses (the
rows of a batch), writer (csv, csv.gz, parquet), batches (the batch loop, `write_synthetic`),
meds (the MEDS dataset), cli.
"""
from ehrjepa.synth.batches import simulate_batch, write_synthetic
from ehrjepa.synth.cli import configure, main
from ehrjepa.synth.meds import write_meds
from ehrjepa.synth.schemas import MODULE_OF, SCHEMAS
from ehrjepa.synth.severity import MAX_STAY_HOURS, simulate_stays
from ehrjepa.synth.writer import FORMATS, parquet_schema

__all__ = ["FORMATS", "MAX_STAY_HOURS", "MODULE_OF", "SCHEMAS", "configure", "main",
           "parquet_schema", "simulate_batch", "simulate_stays", "write_meds",
           "write_synthetic"]
