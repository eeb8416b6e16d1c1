"""Patients, hospital admissions and ICU stays of a batch (with each stay's severity path), and
their tables: patients, admissions, icustays."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrjepa.synth.columns import choice, coded, ints, times
from ehrjepa.synth.dictionaries import (ADMISSION_LOCATIONS, CAREUNITS, DISCHARGE_LOCATIONS,
                                        ED_TYPES, ICU_ADMISSION_TYPES, INSURANCE, MARITAL, RACE,
                                        WARD_ADMISSION_TYPES, YEAR_GROUPS)
from ehrjepa.synth.schemas import DAY, HOUR, MINUTE, SCHEMAS
from ehrjepa.synth.severity import p_readmit_30d, p_second_stay, sickness, simulate_stays


def draw_patients(rng, first: int, n: int) -> dict:
    """Demographics of patients first .. first + n - 1."""
    age = np.clip(np.round(rng.normal(64, 17, n)), 18, 91).astype(np.int64)
    year = rng.integers(2110, 2190, n)
    return dict(
        subject_id=10_000_000 + first + np.arange(n, dtype=np.int64),
        gender=pa.array(np.where(rng.random(n) < 0.45, "F", "M")),
        age=age, anchor_year=year,
        year_group=pa.array(YEAR_GROUPS).take(pa.array(rng.integers(0, len(YEAR_GROUPS), n))),
        # admissions of a patient start within 3 years of 1 January of anchor_year
        start=(year - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)
        + rng.integers(0, 3 * 365 * 24 * 60, n) * MINUTE,
        marital=choice(rng, MARITAL, n), race=choice(rng, RACE, n))


def stays_and_admissions(rng, pat: dict) -> tuple[dict, dict]:
    """ICU stays (with their severity paths) and hospital admissions of a batch of patients.

    Each patient has 1 (88 %) or 2 ICU admissions and Poisson(0.6) admissions without an ICU
    stay. A surviving first stay is followed by a second ICU stay in its admission, and an
    admission left alive by a new (ward) admission within 30 days, with probabilities that rise
    with how sick the stay was (severity.py). A patient dies at most once: further fatal
    admissions are dropped, and the fatal one comes last.
    """
    n = len(pat["age"])
    n_icu = 1 + (rng.random(n) < 0.12)
    icu_pat = np.repeat(np.arange(n), n_icu)
    sim1 = simulate_stays(rng, pat["age"][icu_pat])
    last_sick = sickness(sim1)  # of the admission's last stay, once the second ones are drawn
    second = ~sim1["died"] & (rng.random(len(icu_pat)) < p_second_stay(last_sick))
    sim2 = simulate_stays(rng, pat["age"][icu_pat[second]])
    last_frac = sim1["damage_frac"].copy()
    last_frac[second] = sim2["damage_frac"]
    last_sick[second] = sickness(sim2)
    died_icu = sim1["died"].copy()
    died_icu[second] = sim2["died"]
    ward_death = ~died_icu & (rng.random(len(icu_pat)) < 0.5 * np.minimum(last_frac, 1.0) ** 2)
    fatal = died_icu | ward_death
    readmit = ~fatal & (rng.random(len(icu_pat)) < p_readmit_30d(last_sick, pat["age"][icu_pat]))
    fatal_before = np.cumsum(fatal) - fatal  # fatal ICU admissions earlier in the batch ...
    first_of_pat = np.searchsorted(icu_pat, icu_pat)
    fatal_before = fatal_before - fatal_before[first_of_pat]  # ... of the same patient
    keep_adm = ~(fatal & (fatal_before > 0))

    # stays: stay 1 of every ICU admission, then the second stays
    s_adm = np.concatenate([np.arange(len(icu_pat)), np.flatnonzero(second)])
    s_order = np.concatenate([np.zeros(len(icu_pat), np.int64), np.ones(second.sum(), np.int64)])
    keep_stay = keep_adm[s_adm]
    x = np.concatenate([sim1["x"], sim2["x"]])[keep_stay]
    x_smooth = np.concatenate([sim1["x_smooth"], sim2["x_smooth"]])[keep_stay]
    hours = np.concatenate([sim1["hours"], sim2["hours"]])[keep_stay]
    b = np.concatenate([sim1["b"], sim2["b"]])[keep_stay]
    course = {k: np.concatenate([sim1[k], sim2[k]])[keep_stay]
              for k in ("peak", "damage_frac", "vent_hours", "died")}
    s_adm, s_order = s_adm[keep_stay], s_order[keep_stay]
    S = len(hours)
    los = hours * HOUR + rng.integers(60, HOUR + 1, S)  # seconds; ceil(los / 1 h) = hours + 1

    # ICU admissions: ward time before the first stay, between stays and after the last one
    A_icu = len(icu_pat)
    pre = rng.exponential(8 * HOUR, A_icu) + rng.integers(10 * MINUTE, HOUR, A_icu)
    pre = pre.astype(np.int64)
    gap = (6 * HOUR + rng.exponential(48 * HOUR, A_icu)).astype(np.int64)
    post = np.exp(rng.normal(np.log(3 * DAY), 0.7, A_icu)).astype(np.int64) + 2 * HOUR
    ward_death_wait = (2 * HOUR + rng.random(A_icu) * 7 * DAY).astype(np.int64)
    post = np.where(died_icu, 0, np.where(ward_death, ward_death_wait, post))
    los1 = np.zeros(A_icu, np.int64)
    los2 = np.zeros(A_icu, np.int64)
    los1[s_adm[s_order == 0]] = los[s_order == 0]
    los2[s_adm[s_order == 1]] = los[s_order == 1]
    has2 = np.zeros(A_icu, bool)
    has2[s_adm[s_order == 1]] = True
    stay_offset = np.where(s_order == 0, pre[s_adm], pre[s_adm] + los1[s_adm] + gap[s_adm])
    # a stay that ends in death ends on a whole minute (admittime is on one): the admission's
    # dischtime and deathtime are then its outtime exactly, and MEDS_DEATH its ICU_DISCHARGE
    los = los - np.where(course["died"], (stay_offset + los) % MINUTE, 0)  # still > hours * HOUR
    los1[s_adm[s_order == 0]] = los[s_order == 0]
    los2[s_adm[s_order == 1]] = los[s_order == 1]
    icu_len = pre + los1 + np.where(has2, gap + los2, 0) + post
    icu_len = -(-icu_len // MINUTE) * MINUTE  # dischtime on a whole minute

    # admissions without an ICU stay: the patients' own, then the 30-day readmissions
    n_ward = np.minimum(rng.poisson(0.6, n), 5)
    readm = np.flatnonzero(readmit & keep_adm)  # ICU admission that each readmission follows
    ward_pat = np.concatenate([np.repeat(np.arange(n), n_ward), icu_pat[readm]])
    A_ward = len(ward_pat)
    ward_len = (np.exp(rng.normal(np.log(2.5 * DAY), 0.8, A_ward)) // MINUTE * MINUTE
                ).astype(np.int64) + 4 * HOUR

    # all admissions of the batch, in time order per patient (random), a fatal one last and a
    # readmission right after the admission it follows
    a_pat = np.concatenate([icu_pat[keep_adm], ward_pat])
    a_icu = np.concatenate([np.flatnonzero(keep_adm), -np.ones(A_ward, np.int64)])  # ICU adm row
    a_fatal = np.concatenate([fatal[keep_adm], np.zeros(A_ward, bool)])
    key = rng.random(A_icu + A_ward)
    key[A_icu + A_ward - len(readm):] = key[readm]
    a_key = np.concatenate([key[:A_icu][keep_adm], key[A_icu:]])
    a_readm = np.concatenate([np.zeros(A_ward - len(readm) + int(keep_adm.sum()), bool),
                              np.ones(len(readm), bool)])
    order = np.lexsort((a_readm, a_key, a_fatal, a_pat))
    a_pat, a_icu, a_fatal, a_readm = a_pat[order], a_icu[order], a_fatal[order], a_readm[order]
    A = len(a_pat)
    a_len = np.where(a_icu >= 0, icu_len[np.maximum(a_icu, 0)],
                     np.concatenate([np.zeros(int(keep_adm.sum()), np.int64), ward_len])[order])
    a_gap = (DAY + np.exp(rng.normal(np.log(150 * DAY), 1.0, A))) // MINUTE * MINUTE
    # the wait before a readmission: 6 h to 29 days, most within two weeks
    wait = np.minimum(6 * HOUR + rng.exponential(9 * DAY, A), 29 * DAY) // MINUTE * MINUTE
    a_gap = np.where(np.append(a_readm[1:], False), wait, a_gap)
    step = a_len + a_gap.astype(np.int64)
    first_adm = np.searchsorted(a_pat, a_pat)
    csum = np.cumsum(step) - step
    admittime = pat["start"][a_pat] + csum - csum[first_adm]
    dischtime = admittime + a_len
    a_j = np.arange(A) - first_adm  # position of the admission among the patient's
    hadm_id = 20_000_000 + 10 * (pat["subject_id"][a_pat] - 10_000_000) + a_j

    adm_of_icu = np.full(A_icu, -1, np.int64)
    adm_of_icu[a_icu[a_icu >= 0]] = np.flatnonzero(a_icu >= 0)
    s_a = adm_of_icu[s_adm]  # admission row of each stay
    intime = admittime[s_a] + stay_offset
    outtime = intime + los
    s_order_key = np.lexsort((intime, a_pat[s_a]))  # stays in (patient, time) order
    stays = dict(adm=s_a, pat=a_pat[s_a], intime=intime, outtime=outtime, hours=hours, x=x,
                 x_smooth=x_smooth, b=b, **course)
    stays = {k: v[s_order_key] for k, v in stays.items()}
    first_stay = np.searchsorted(stays["pat"], stays["pat"])
    stays["stay_id"] = (30_000_000 + 10 * (pat["subject_id"][stays["pat"]] - 10_000_000)
                        + np.arange(S) - first_stay)
    stays["hadm_id"] = hadm_id[stays["adm"]]
    stays["subject_id"] = pat["subject_id"][stays["pat"]]

    # times of death: at the admission's dischtime (an ICU death's outtime, a ward death's)
    deathtime = np.where(a_fatal, dischtime, 0)
    adms = dict(pat=a_pat, hadm_id=hadm_id, admittime=admittime, dischtime=dischtime,
                fatal=a_fatal, is_icu=a_icu >= 0,
                pre=np.where(a_icu >= 0, pre[np.maximum(a_icu, 0)], 3 * HOUR),
                deathtime=deathtime)
    return stays, adms


def small_tables(rng, pat: dict, stays: dict, adms: dict, providers: list) -> dict:
    """The patients, admissions and icustays tables of a batch."""
    A, S, P = len(adms["pat"]), len(stays["hours"]), len(pat["age"])
    # death date: in-hospital deaths, and 10 % of the others within a year of their last discharge
    last_adm = np.searchsorted(adms["pat"], np.arange(P), side="right") - 1
    fatal_adm = np.zeros(P, bool)
    fatal_adm[adms["pat"][adms["fatal"]]] = True
    later = rng.random(P) < 0.10
    dod = np.where(fatal_adm, adms["deathtime"][last_adm],
                   adms["dischtime"][last_adm] + rng.integers(1, 366, P) * DAY) // DAY
    patients = pa.table([
        ints(pat["subject_id"]), pat["gender"], ints(pat["age"]), ints(pat["anchor_year"]),
        pat["year_group"],
        pa.array(dod.astype(np.int32), pa.int32(), mask=~(fatal_adm | later)).cast(pa.date32()),
    ], schema=SCHEMAS["patients"])

    is_icu = adms["is_icu"]
    atype = pc.if_else(pa.array(is_icu), choice(rng, ICU_ADMISSION_TYPES, A),
                       choice(rng, WARD_ADMISSION_TYPES, A))
    ed = np.isin(np.array(atype.to_pylist(), object), list(ED_TYPES))
    location = pc.if_else(pa.array(ed), pa.scalar("EMERGENCY ROOM"),
                          choice(rng, ADMISSION_LOCATIONS, A))
    discharge = pc.if_else(pa.array(adms["fatal"]), pa.scalar("DIED"),
                           choice(rng, DISCHARGE_LOCATIONS, A))
    age = pat["age"][adms["pat"]]
    insurance = np.where(age >= 65, np.where(rng.random(A) < 0.8, 0, 2),
                         np.where(rng.random(A) < 0.25, 1, 2))
    provider = np.where(rng.random(A) < 0.97, rng.integers(0, len(providers), A), -1)
    admit = adms["admittime"]
    edreg = (admit - rng.integers(60, 10 * 60, A) * MINUTE)
    edout = admit + (rng.random(A) * np.minimum(3 * HOUR, adms["pre"])) // MINUTE * MINUTE
    admissions = pa.table([
        ints(pat["subject_id"][adms["pat"]]), ints(adms["hadm_id"]), times(admit),
        times(adms["dischtime"]), times(adms["deathtime"], adms["fatal"]), atype,
        coded(np.maximum(provider, 0), providers, provider >= 0), location, discharge,
        coded(insurance, INSURANCE),
        coded((rng.random(A) < 0.07).astype(np.int32), ["ENGLISH", "?"]),
        pat["marital"].take(pa.array(adms["pat"])), pat["race"].take(pa.array(adms["pat"])),
        times(edreg, ed), times(edout, ed), ints(adms["fatal"].astype(np.int64)),
    ], schema=SCHEMAS["admissions"])

    first = choice(rng, CAREUNITS, S)
    last = pc.if_else(pa.array(rng.random(S) < 0.85), first, choice(rng, CAREUNITS, S))
    icustays = pa.table([
        ints(stays["subject_id"]), ints(stays["hadm_id"]), ints(stays["stay_id"]), first, last,
        times(stays["intime"]), times(stays["outtime"]),
        pa.array((stays["outtime"] - stays["intime"]) / DAY, pa.float64()),
    ], schema=SCHEMAS["icustays"])
    return dict(patients=patients, admissions=admissions, icustays=icustays)
