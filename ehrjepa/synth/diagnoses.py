"""The diagnoses_icd rows of a batch: ICD-10-CM codes per hospital admission, drawn from the
latent course of its ICU stays, with chronic conditions as noise.

Per admission, from its ICU stays (severity.py): P the highest smooth severity of its stays,
D the largest damage fraction D(end) / K (at most 1), V the ventilated hours (smooth severity
above 0.8, as chartevents ventilates), and R the ratio of the highest to the lowest creatinine
the labs drew in the admission (labevents.py: creatinine = baseline * exp(0.25 x)). An
admission without an ICU stay has P ~ Normal(-1, 0.4), D = V = 0 (the labs' ward severity).
Each phenotype is coded with probability sigmoid(z), z with its own Normal(0, 0.5) noise:

    sepsis         z = -2.3 + 0.9 P + 1.5 D                  A41.9, A41.51, A41.01, A40.3
    shock          z = -3.7 + 0.8 P + 2.5 D                  R65.21 with sepsis (septic shock),
                                                             else R57.0 with heart failure,
                                                             R57.1 or R57.9
    aki            z = -2.9 + 2.0 [R >= 1.5] + 0.8 P + 1.0 D  N17.9, N17.0 (KDIGO's 1.5x rule)
    arf            z = -2.8 + 1.2 log(1 + V) (- 1 off the ICU)  J96.01, J96.00, J96.02, J96.21
    heart failure  z = -2.4 + 0.04 (age - 65) + 0.5 P         I50.23, I50.33, I50.9 in the ICU;
                                                             I50.22, I50.32, I50.9 elsewhere

sepsis without shock adds R65.20 (severe sepsis) 40 % of the time. The first code (seq_num 1)
is the reason for admission: the sepsis code where there is one, else one of a few ICU or ward
reasons (pneumonia, NSTEMI, GI bleed, stroke, ...). Chronic conditions (diabetes,
hypertension, hyperlipidaemia, ...) belong to the patient, drawn once with rates that rise
with age and independent of the course, and each admission codes each of them with
probability 0.85. An admission has 1 to MAX_CODES codes (chronic ones dropped past that).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrjepa.synth.columns import coded, ints, ragged
from ehrjepa.synth.dictionaries import ICD, ICD_CODES
from ehrjepa.synth.schemas import SCHEMAS

MAX_CODES = 15
CREATININE = 50912
SEPSIS = (["A419", "A4151", "A4101", "A403"], [0.6, 0.2, 0.1, 0.1])
ARF = (["J9601", "J9600", "J9602", "J9621"], [0.5, 0.2, 0.15, 0.15])
AKI = (["N179", "N170"], [0.85, 0.15])
HF_ICU = (["I5023", "I5033", "I509"], [0.35, 0.35, 0.3])
HF_WARD = (["I5022", "I5032", "I509"], [0.35, 0.35, 0.3])
ICU_REASONS = (["J189", "I214", "K922", "I639", "I619", "J441", "K8590"],
               [0.25, 0.2, 0.15, 0.12, 0.08, 0.1, 0.1])
WARD_REASONS = (["J189", "N390", "R079", "R55", "K922", "I214", "J441"],
                [0.18, 0.16, 0.2, 0.14, 0.1, 0.1, 0.12])
# chronic condition: (code, prevalence at 65, change per year of age)
CHRONIC = [("I10", 0.40, 0.008), ("E785", 0.30, 0.006), ("E119", 0.22, 0.003),
           ("Z87891", 0.20, 0.0), ("K219", 0.15, 0.0), ("I2510", 0.14, 0.005),
           ("D649", 0.12, 0.002), ("I4891", 0.10, 0.006), ("E039", 0.09, 0.002),
           ("J449", 0.09, 0.003), ("F32A", 0.09, -0.002), ("G4733", 0.07, 0.0),
           ("N1830", 0.06, 0.004)]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _pick(rng, options, n: int) -> np.ndarray:
    """n draws from (codes, probabilities) as rows of ICD_CODES."""
    codes, p = options
    return np.array([ICD[c] for c in codes])[rng.choice(len(codes), n, p=np.asarray(p) / sum(p))]


def creatinine_ratio(labevents: pa.Table, hadm_id: np.ndarray) -> np.ndarray:
    """Highest over lowest creatinine drawn in each admission (1 where fewer than two draws)."""
    lab = labevents.filter(pc.and_(pc.equal(labevents["itemid"], CREATININE),
                                   pc.is_valid(labevents["valuenum"])))
    lab = lab.filter(pc.is_valid(lab["hadm_id"]))
    agg = lab.group_by("hadm_id").aggregate([("valuenum", "min"), ("valuenum", "max")])
    ratio = np.ones(len(hadm_id))
    at = pc.index_in(agg["hadm_id"], pa.array(hadm_id)).to_numpy(zero_copy_only=False)
    ratio[at] = agg["valuenum_max"].to_numpy() / agg["valuenum_min"].to_numpy()
    return ratio


def admission_course(rng, pat: dict, stays: dict, adms: dict) -> dict:
    """P, D, V per admission (module docstring); ward admissions get a mild random P."""
    A = len(adms["pat"])
    peak = rng.normal(-1.0, 0.4, A)
    icu = np.zeros(A, bool)
    icu[stays["adm"]] = True
    peak[icu] = -np.inf
    np.maximum.at(peak, stays["adm"], stays["peak"])
    damage = np.zeros(A)
    np.maximum.at(damage, stays["adm"], np.minimum(stays["damage_frac"], 1.0))
    vent = np.zeros(A)
    np.add.at(vent, stays["adm"], stays["vent_hours"])
    return dict(icu=icu, peak=peak, damage=damage, vent=vent, age=pat["age"][adms["pat"]])


def diagnoses(rng, pat: dict, stays: dict, adms: dict, labevents: pa.Table) -> pa.Table:
    """The diagnoses_icd rows of a batch: every admission's codes, ordered by seq_num."""
    A, P = len(adms["pat"]), len(pat["age"])
    c = admission_course(rng, pat, stays, adms)
    ratio = creatinine_ratio(labevents, adms["hadm_id"])

    def has(z):
        return rng.random(A) < _sigmoid(z + rng.normal(0.0, 0.5, A))

    sepsis = has(-2.3 + 0.9 * c["peak"] + 1.5 * c["damage"])
    shock = has(-3.7 + 0.8 * c["peak"] + 2.5 * c["damage"])
    aki = has(-2.9 + 2.0 * (ratio >= 1.5) + 0.8 * c["peak"] + 1.0 * c["damage"])
    arf = has(-2.8 + 1.2 * np.log1p(c["vent"]) - 1.0 * ~c["icu"])
    hf = has(-2.4 + 0.04 * (c["age"] - 65) + 0.5 * c["peak"])

    rows = []  # (admission, rank, code): rank 0 the reason, 1 acute, 2 chronic

    def add(mask, codes, rank):
        rows.append((np.flatnonzero(mask), np.full(int(mask.sum()), rank), codes))

    reason = np.where(c["icu"], _pick(rng, ICU_REASONS, A), _pick(rng, WARD_REASONS, A))
    add(sepsis, _pick(rng, SEPSIS, A)[sepsis], 0)
    add(~sepsis, reason[~sepsis], 0)
    septic_shock = sepsis & shock
    add(septic_shock, np.full(A, ICD["R6521"])[septic_shock], 1)
    severe = sepsis & ~shock & (rng.random(A) < 0.4)
    add(severe, np.full(A, ICD["R6520"])[severe], 1)
    other_shock = np.where(hf, ICD["R570"], np.where(rng.random(A) < 0.5, ICD["R571"],
                                                     ICD["R579"]))
    add(shock & ~sepsis, other_shock[shock & ~sepsis], 1)
    add(aki, _pick(rng, AKI, A)[aki], 1)
    add(arf, _pick(rng, ARF, A)[arf], 1)
    hf_code = np.where(c["icu"], _pick(rng, HF_ICU, A), _pick(rng, HF_WARD, A))
    add(hf, hf_code[hf], 1)
    # chronic conditions of the patient, coded in most of their admissions
    age = pat["age"].astype(np.float64)
    for code, p65, slope in CHRONIC:
        patient_has = rng.random(P) < np.clip(p65 + slope * (age - 65), 0.01, 0.9)
        coded_here = patient_has[adms["pat"]] & (rng.random(A) < 0.85)
        add(coded_here, np.full(A, ICD[code])[coded_here], 2)

    adm = np.concatenate([r[0] for r in rows])
    rank = np.concatenate([r[1] for r in rows])
    code = np.concatenate([r[2] for r in rows])
    order = np.lexsort((rank, adm))  # stable: the order of `rows` within a rank
    adm, code = adm[order], code[order]
    _, seq = ragged(np.bincount(adm, minlength=A))
    keep = seq < MAX_CODES
    adm, code, seq = adm[keep], code[keep], seq[keep]
    return pa.table([
        ints(pat["subject_id"][adms["pat"][adm]]), ints(adms["hadm_id"][adm]), ints(seq + 1),
        coded(code, ICD_CODES), ints(np.full(len(adm), 10))], schema=SCHEMAS["diagnoses_icd"])
