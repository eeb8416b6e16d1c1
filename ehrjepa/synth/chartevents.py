"""The chartevents rows of a batch's stays: vitals, GCS, ventilation, alarms and assessments, with
the dirty rows of the real data."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ehrjepa.synth.columns import coded, floats, ints, pick_dirty, ragged, times, value_text
from ehrjepa.synth.dictionaries import (ALARMS, DIRTY_TEXT, IS_FEATURE, ITEM, ITEM_IDS, ITEM_UOM,
                                        TEXT_AT, TEXT_ITEMS, TEXT_VOCAB)
from ehrjepa.synth.schemas import DAY, HOUR, MINUTE, SCHEMAS


class _Rows:
    """Collects chart rows as parallel arrays: stay, time, item code, valuenum, text code."""

    def __init__(self):
        self.parts = []

    def add(self, stay, t, itemid, valuenum, text=None):
        n = len(stay)
        text = np.full(n, -1, np.int32) if text is None else np.asarray(text, np.int32)
        valuenum = np.broadcast_to(np.asarray(valuenum, np.float64), (n,))
        self.parts.append((stay, t, np.full(n, ITEM[itemid], np.int16), valuenum, text))

    def arrays(self):
        return [np.concatenate(c) for c in zip(*self.parts)]


def chartevents(rng, stays: dict) -> pa.Table:
    """Bedside charting of every stay: vitals about hourly with jitter, gaps, extra readings when
    sick, GCS and temperature every 4 h, ventilator settings, alarms and assessments."""
    S = len(stays["hours"])
    intime, outtime, X, Xs = stays["intime"], stays["outtime"], stays["x"], stays["x_smooth"]
    n_hours = stays["hours"] + 1

    # charting slots: one on arrival, then on every clock hour before outtime; some stays have
    # their first reading just before intime and one just after outtime
    first_hour = (intime // HOUR + 1) * HOUR
    n_grid = np.maximum(0, -(-(outtime - first_hour) // HOUR))
    late = rng.random(S) < 0.05
    slot_s, k = ragged(1 + n_grid + late)
    t = first_hour[slot_s] + (k - 1) * HOUR
    jitter = rng.random(len(t)) < 0.3
    t = t + np.where(jitter, rng.integers(-15, 16, len(t)) * MINUTE, 0)
    arrive = intime + rng.integers(1, 21, S) * MINUTE
    early = rng.random(S) < 0.15
    arrive = np.where(early, intime - rng.integers(5, 61, S) * MINUTE, arrive) // MINUTE * MINUTE
    t = np.where(k == 0, arrive[slot_s], t)
    is_late = late[slot_s] & (k == 1 + n_grid[slot_s])
    t = np.where(is_late, outtime[slot_s] + rng.integers(1, 31, len(t)) * MINUTE, t)
    t = t // MINUTE * MINUTE
    # gaps: single missed hours, and for 30 % of stays one block of 2-6 h off the unit
    gap_start = rng.random(S) * n_hours * HOUR
    gap_len = np.where(rng.random(S) < 0.3, rng.integers(2, 7, S) * HOUR, 0)
    rel = t - intime[slot_s]
    off = (rel >= gap_start[slot_s]) & (rel < gap_start[slot_s] + gap_len[slot_s])
    kept = ~off & (rng.random(len(t)) >= 0.05) | (k == 0)
    slot_s, k, t = slot_s[kept], k[kept], t[kept]
    hour = np.clip((t - intime[slot_s]) // HOUR, 0, n_hours[slot_s] - 1)
    x, xs = X[slot_s, hour], Xs[slot_s, hour]

    # extra readings at +15/30/45 min in the first 2 hours and when sick (x > 0.3)
    n_extra = np.where(k <= 2, 3, rng.binomial(3, np.clip(0.3 * (x - 0.3), 0.0, 0.8)))
    parent, j = ragged(n_extra)
    e_s, e_t, e_x = slot_s[parent], t[parent] + (j + 1) * 15 * MINUTE, x[parent]

    # per-stay charting habits and physiology offsets
    art = rng.random(S) < 1 / (1 + np.exp(-(1.5 * stays["b"] - 0.3)))
    art_alt = rng.random(S) < 0.1  # the other arterial line item family (225309/225310/225312)
    fahrenheit = rng.random(S) < 0.7
    af = rng.random(S) < 0.1
    phase = rng.integers(0, 4, (S, 4))  # hours of temperature, GCS, assessments, alarms
    hr0, sbp0 = rng.normal(85, 10, S), rng.normal(120, 14, S)
    dbp_ratio, rr0 = rng.normal(0.52, 0.04, S), rng.normal(18, 3, S)
    spo2_0, temp0 = rng.normal(97.5, 1.0, S), rng.normal(37.0, 0.3, S)

    rows = _Rows()
    # monitor and blood pressure: on every kept slot and every extra reading
    ms = np.concatenate([slot_s, e_s])
    mt = np.concatenate([t, e_t])
    mx = np.concatenate([x, e_x])
    base = np.arange(len(ms)) < len(slot_s)
    n = len(ms)

    def noise(sd):
        return rng.normal(0.0, sd, n)

    hr = np.clip(np.round(hr0[ms] + 12 * mx + noise(5)), 25, 250)
    rr = np.clip(np.round(rr0[ms] + 3 * mx + noise(2.5)), 4, 60)
    spo2 = np.clip(np.round(spo2_0[ms] - 1.8 * np.maximum(mx - 0.3, 0) + noise(1.2)), 60, 100)
    sbp = sbp0[ms] - 12 * mx + noise(7)
    dbp = sbp * dbp_ratio[ms] + noise(4)
    mbp = (sbp + 2 * dbp) / 3 + noise(2)
    for itemid, v, p in ((220045, hr, 0.98), (220277, spo2, 0.97), (220210, rr, 0.96)):
        m = rng.random(n) < p
        rows.add(ms[m], mt[m], itemid, v[m])
    on_art = art[ms] & (rng.random(n) < 0.95)
    nibp = np.where(art[ms], base & (rng.random(n) < 0.2), rng.random(n) < 0.95)
    alt = art_alt[ms]
    for items, m, sd in (((220050, 220051, 220052), on_art & ~alt, 0.0),
                         ((225309, 225310, 225312), on_art & alt, 0.0),
                         ((220179, 220180, 220181), nibp, 5.0)):
        for itemid, v in zip(items, (sbp, dbp, mbp)):
            rows.add(ms[m], mt[m], itemid, np.round(v[m] + rng.normal(0, sd + 1e-9, m.sum())))

    # temperature and GCS every 4 h, assessments every 2 h, alarm settings every 4 h
    n = len(slot_s)
    kk = k - 1  # clock hour index
    temp_due = ((kk % 4 == phase[slot_s, 0]) & (rng.random(n) < 0.9)) | (rng.random(n) < 0.03)
    temp_c = np.round(temp0[slot_s] + 0.35 * x + rng.normal(0, 0.2, n), 1)
    in_f = fahrenheit[slot_s] ^ (rng.random(n) < 0.05)
    m = temp_due & in_f
    rows.add(slot_s[m], t[m], 223761, np.round(temp_c[m] * 1.8 + 32, 1))
    m = temp_due & ~in_f
    rows.add(slot_s[m], t[m], 223762, temp_c[m])
    gcs_due = ((kk % 4 == phase[slot_s, 1]) & (rng.random(n) < 0.85)) | (
        (x > 1.5) & (rng.random(n) < 0.15))
    for itemid, top, slope in ((220739, 4, 0.9), (223900, 5, 1.1), (223901, 6, 1.0)):
        score = np.clip(np.round(top - slope * np.maximum(x - 0.5, 0) + rng.normal(0, 0.35, n)),
                        1, top)
        m = gcs_due & (rng.random(n) < 0.97)
        rows.add(slot_s[m], t[m], itemid, score[m], TEXT_AT[itemid] + score[m] - 1)

    # ventilation while the smooth severity is above 0.8: FiO2 and total respiratory rate
    vent = xs > 0.8
    fio2 = np.clip(np.round((40 + 15 * (xs - 0.8) + rng.normal(0, 6, n)) / 5) * 5, 21, 100)
    fio2_low = np.clip(np.round((25 + rng.normal(0, 5, n)) / 5) * 5, 21, 40)
    m = vent & (rng.random(n) < 0.6)
    rows.add(slot_s[m], t[m], 223835, fio2[m])
    m = ~vent & (rng.random(n) < 0.03)
    rows.add(slot_s[m], t[m], 223835, fio2_low[m])
    m = vent & (rng.random(n) < 0.85)
    rr_total = rr0[slot_s[m]] + 3 * x[m] + rng.normal(0, 2, m.sum())
    rows.add(slot_s[m], t[m], 224690, np.round(rr_total))
    m = ~vent & (rng.random(n) < 0.25)
    rows.add(slot_s[m], t[m], 223834, rng.integers(1, 7, m.sum()))

    # unrelated items a pipeline must drop: rhythm, alarms, assessments, admission weight
    m = rng.random(n) < 0.8
    hr_now = hr[:n]
    rhythm = np.where(af[slot_s], 3, (hr_now >= 60).astype(np.int32) + (hr_now >= 100))
    rows.add(slot_s[m], t[m], 220048, np.nan, TEXT_AT["rhythm"] + rhythm[m])
    due = (kk % 4 == phase[slot_s, 3]) & (rng.random(n) < 0.9)
    for itemid, setting in ALARMS:
        rows.add(slot_s[due], t[due], itemid, setting)
    for itemid in (224641, 224168):
        rows.add(slot_s[due], t[due], itemid, np.nan, np.full(due.sum(), TEXT_AT["check"]))
    due = kk % 2 == phase[slot_s, 2] % 2
    for itemid, words in TEXT_ITEMS.items():
        m = due & (rng.random(n) < 0.7)
        rows.add(slot_s[m], t[m], itemid, np.nan,
                 TEXT_AT[itemid] + rng.integers(0, len(words), m.sum()))
    m = (k == 0) & (rng.random(n) < 0.9)
    rows.add(slot_s[m], t[m], 226512, np.round(np.exp(rng.normal(np.log(80), 0.2, m.sum())), 1))

    st, ct, code, valuenum, text = rows.arrays()
    order = np.argsort((st.astype(np.int64) << 40) | ((ct - intime[st] + 2 * DAY) << 6) | code)
    st, ct, code, valuenum, text = st[order], ct[order], code[order], valuenum[order], text[order]
    N = len(st)

    # dirty rows: out-of-range numbers (warning = 1) and text where a number belongs
    warning = np.zeros(N, np.int64)
    numeric = np.flatnonzero(IS_FEATURE[code])
    bad = pick_dirty(rng, numeric, 5e-4, 3)
    valuenum[bad] = np.where(code[bad] == ITEM[223762], np.round(valuenum[bad] * 1.8 + 32, 1),
                             np.where(code[bad] == ITEM[223835], valuenum[bad] / 100,
                                      valuenum[bad] * 10))
    warning[bad] = 1
    bad = pick_dirty(rng, numeric, 2e-4, 2)
    valuenum[bad] = np.nan
    text[bad] = TEXT_AT["dirty"] + rng.integers(0, len(DIRTY_TEXT), len(bad))

    caregivers = rng.integers(10_000, 100_000, (S, 4))
    shift = ((ct - intime[st]) // (12 * HOUR)) % 4
    storetime = ct + (1 + rng.exponential(10, N).astype(np.int64)) * MINUTE
    return pa.table([
        ints(stays["subject_id"][st]), ints(stays["hadm_id"][st]), ints(stays["stay_id"][st]),
        ints(caregivers[st, shift], rng.random(N) >= 0.01), times(ct), times(storetime),
        ints(ITEM_IDS[code]), value_text(valuenum, text, TEXT_VOCAB), floats(valuenum),
        coded(code, ITEM_UOM),
        ints(warning)], schema=SCHEMAS["chartevents"])
