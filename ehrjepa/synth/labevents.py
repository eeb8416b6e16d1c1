"""The labevents rows of a batch: draws in the ICU, the ED, on the ward and as an outpatient, in
panels, with values from the severity and per-patient baselines, and dirty rows."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ehrjepa.synth.columns import coded, floats, ints, pick_dirty, ragged, times, value_text
from ehrjepa.synth.dictionaries import (D_LABITEMS, LAB, LAB_COMMENTS, LAB_DIRTY_TEXT, LAB_IDS,
                                        PANELS)
from ehrjepa.synth.schemas import DAY, HOUR, MINUTE, SCHEMAS


def _daily(rng, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """About one time a day in each interval [start, end): (interval index, time)."""
    n = np.maximum(0, (end - start) // DAY)
    g, j = ragged(n)
    minute = rng.integers(0, DAY // MINUTE, len(g))
    return g, start[g] // MINUTE * MINUTE + j * DAY + minute * MINUTE


def labevents(rng, pat: dict, stays: dict, adms: dict, first_id: int, first_specimen: int,
              providers: list) -> pa.Table:
    """Lab draws every 4-24 h in the ICU (more often when sicker), in the ED just before ICU
    intime, daily on the ward, and a few outpatient draws; panels with ~1/3 of items missing."""
    S, P = len(stays["hours"]), len(pat["age"])
    intime, outtime, X, Xs = stays["intime"], stays["outtime"], stays["x"], stays["x_smooth"]
    n_hours = stays["hours"] + 1
    parts = []  # (patient, hadm_id or -1, time, severity, ventilated, setting 0 ICU 1 ward 2 out)

    # ICU: gaps of I_s * U(0.6, 1.4) h clipped to [4, 24], I_s shorter for sicker stays
    every = np.clip(10 * np.exp(-0.35 * stays["b"] + rng.normal(0, 0.3, S)), 4, 24)
    g, j = ragged(n_hours // 4 + 2)
    gap = np.clip(every[g] * rng.uniform(0.6, 1.4, len(g)), 4, 24) * HOUR
    gap = np.where(j == 0, rng.uniform(0, 3, len(g)) * HOUR, gap).astype(np.int64)
    csum = np.cumsum(gap)
    rel = csum - (csum - gap)[np.searchsorted(g, g)]  # within-stay running sum
    m = rel < outtime[g] - intime[g]
    g, t = g[m], (intime[g[m]] + rel[m]) // MINUTE * MINUTE
    h = np.clip((t - intime[g]) // HOUR, 0, n_hours[g] - 1)
    parts.append((stays["pat"][g], stays["hadm_id"][g], t, X[g, h], Xs[g, h] > 0.8, 0))
    # ED / pre-ICU draw within 6 h before intime; most are not linked to the admission
    m = rng.random(S) < 0.7
    t = (intime[m] - rng.integers(15, 6 * 60, m.sum()) * MINUTE) // MINUTE * MINUTE
    linked = (rng.random(m.sum()) < 0.4) & (t >= adms["admittime"][stays["adm"][m]])
    parts.append((stays["pat"][m], np.where(linked, stays["hadm_id"][m], -1), t, X[m, 0],
                  np.zeros(m.sum(), bool), 0))
    # ward, after each ICU stay until the next stay or discharge, at the stay's last severity
    nxt = np.append(intime[1:], 0)
    same = np.append(stays["adm"][1:] == stays["adm"][:-1], False)
    end = np.where(same, nxt, adms["dischtime"][stays["adm"]])
    g, t = _daily(rng, outtime, end)
    last = X[g, n_hours[g] - 1]
    parts.append((stays["pat"][g], stays["hadm_id"][g], t, last, np.zeros(len(g), bool), 1))
    # admissions without an ICU stay: daily draws at a mild, constant severity
    ward = np.flatnonzero(~adms["is_icu"])
    g, t = _daily(rng, adms["admittime"][ward], adms["dischtime"][ward])
    sev = rng.normal(-1.0, 0.4, len(ward))[g]
    parts.append((adms["pat"][ward[g]], adms["hadm_id"][ward[g]], t, sev,
                  np.zeros(len(g), bool), 1))
    # outpatient draws weeks before the first admission, not linked to any admission
    m = rng.random(P) < 0.4
    first_adm = np.searchsorted(adms["pat"], np.flatnonzero(m))
    t = (adms["admittime"][first_adm] - rng.integers(3 * 24 * 60, 120 * 24 * 60, m.sum()) * MINUTE)
    parts.append((np.flatnonzero(m), np.full(m.sum(), -1), t, np.full(m.sum(), -1.2),
                  np.zeros(m.sum(), bool), 2))

    d_pat = np.concatenate([p[0] for p in parts])
    d_hadm = np.concatenate([p[1] for p in parts]).astype(np.int64)
    d_t = np.concatenate([p[2] for p in parts]).astype(np.int64)
    d_x = np.concatenate([p[3] for p in parts])
    d_vent = np.concatenate([p[4] for p in parts])
    d_set = np.concatenate([np.full(len(p[0]), p[5]) for p in parts])
    D = len(d_pat)
    # a few more draws without hadm_id, as in the real data
    d_hadm[rng.random(D) < 0.05] = -1

    # panels per draw: chemistry, blood count, blood gas (more on the ventilator)
    p_panel = np.stack([np.where(d_set == 0, 0.85, 0.8), np.where(d_set == 0, 0.7, 0.6),
                        np.where(d_set == 0, 0.15 + 0.6 * d_vent, 0.03)], 1)
    has = rng.random((D, 3)) < p_panel
    has[:, 0] |= ~has.any(1)  # every draw has at least one panel
    panel_items = [PANELS["chem"], PANELS["cbc"], PANELS["gas"]]
    sp_draw, sp_panel = np.nonzero(has)  # one specimen per (draw, panel)
    n_items = np.array([len(p) for p in panel_items])[sp_panel]
    sp, j = ragged(n_items)
    item_table = np.full((3, max(len(p) for p in panel_items)), -1)
    for i, p in enumerate(panel_items):
        item_table[i, :len(p)] = p
    code = item_table[sp_panel[sp], j]
    keep = rng.random(len(sp)) >= 0.08  # single results missing from a panel ...
    empty = np.bincount(sp, keep, len(sp_draw)) == 0
    keep[np.searchsorted(sp, np.flatnonzero(empty))] = True  # ... but never all of them
    sp, code = sp[keep], code[keep]
    dr = sp_draw[sp]

    # values from the draw's severity and the patient's own baselines
    n = len(dr)
    pid = d_pat[dr]
    x = d_x[dr]
    base = {
        50912: np.exp(rng.normal(np.log(0.9), 0.35, P)),
        51006: np.exp(rng.normal(np.log(18), 0.4, P)),
        50983: rng.normal(139, 2.5, P), 50971: rng.normal(4.1, 0.3, P),
        50902: rng.normal(103, 2.5, P),
        50882: rng.normal(24, 2, P), 50931: rng.normal(125, 20, P), 50868: rng.normal(13, 2, P),
        50960: rng.normal(2.0, 0.2, P), 51222: rng.normal(11, 1.5, P),
        51301: np.exp(rng.normal(np.log(9), 0.3, P)),
        51265: np.exp(rng.normal(np.log(210), 0.35, P)),
    }

    def noise(sd):
        return rng.normal(0, sd, n)

    hgb = base[51222][pid] - 0.4 * x + noise(0.4)
    formulas = {
        50912: base[50912][pid] * np.exp(0.25 * x + noise(0.08)),
        51006: base[51006][pid] * np.exp(0.2 * x + noise(0.08)),
        50983: base[50983][pid] + 0.8 * x + noise(1.5),
        50971: base[50971][pid] + 0.15 * x + noise(0.25),
        50902: base[50902][pid] + noise(1.5),
        50882: np.clip(base[50882][pid] - 2 * x + noise(1.2), 5, 50),
        50931: np.clip(base[50931][pid] + 15 * x + noise(20), 20, 800),
        50868: np.clip(base[50868][pid] + 1.5 * x + noise(1.0), 3, 40),
        50960: base[50960][pid] + noise(0.15),
        51222: hgb,
        51221: 3 * hgb + noise(1.0),
        51301: base[51301][pid] * np.exp(0.15 * x + noise(0.1)),
        51265: base[51265][pid] * np.exp(-0.12 * x + noise(0.06)),
        50813: 1.4 * np.exp(0.45 * x + noise(0.15)),
        50820: 7.40 - 0.04 * x + noise(0.025),
    }
    valuenum = np.zeros(n)
    for itemid, v in formulas.items():
        m = code == LAB[itemid]
        valuenum[m] = np.round(np.maximum(v[m], 0.01), D_LABITEMS[LAB[itemid]][7])
    lo = np.array([r[5] for r in D_LABITEMS])[code]
    hi = np.array([r[6] for r in D_LABITEMS])[code]

    # sort by subject, then time, then item
    t_draw = d_t[dr]
    order = np.argsort((pid.astype(np.int64) << 42)
                       | ((t_draw - pat["start"][pid] + 400 * DAY) << 6) | code)
    sp, code, dr, pid, valuenum, lo, hi = (a[order] for a in (sp, code, dr, pid, valuenum, lo, hi))
    n_rows = len(code)

    # dirty rows: a decimal slip (out of range) and text where a number belongs
    bad = pick_dirty(rng, np.arange(n_rows), 5e-4, 2)
    valuenum[bad] = valuenum[bad] * 10
    text = np.full(n_rows, -1)
    bad = pick_dirty(rng, np.arange(n_rows), 3e-3, 2)
    text[bad] = rng.integers(0, len(LAB_DIRTY_TEXT), len(bad))
    valuenum[bad] = np.nan
    flag = ~np.isnan(valuenum) & ((valuenum < lo) | (valuenum > hi))
    comment = np.where((code == LAB[50931]) & (rng.random(n_rows) < 0.6), 1, 0)
    comment = np.where(rng.random(n_rows) < 0.005, 2, comment)
    comment = np.where(text == 3, 3, comment)

    t = d_t[dr]
    store = t + rng.integers(20, 150, len(sp_draw))[sp] * MINUTE  # one storetime per specimen
    # per-draw order provider (mostly empty) and priority
    provider = np.where(rng.random(D) < 0.15, rng.integers(0, len(providers), D), -1)[dr]
    prio_p = np.array([[0.6, 0.35, 0.05], [0.25, 0.7, 0.05], [0.0, 0.6, 0.4]])[d_set]
    priority = (rng.random(D)[:, None] > np.cumsum(prio_p, 1)).sum(1)[dr]
    specimen = (first_specimen + sp) * 2654435761 % 90_000_000 + 10_000_000
    return pa.table([
        ints(first_id + np.arange(n_rows)), ints(pat["subject_id"][pid]),
        ints(d_hadm[dr], d_hadm[dr] >= 0), ints(specimen), ints(LAB_IDS[code]),
        coded(np.maximum(provider, 0), providers, provider >= 0), times(t), times(store),
        value_text(valuenum, text, LAB_DIRTY_TEXT), floats(valuenum),
        coded(code, [r[4] for r in D_LABITEMS]), floats(lo), floats(hi),
        coded(np.zeros(n_rows, np.int32), ["abnormal"], flag),
        coded(priority, ["STAT", "ROUTINE", None]),
        coded(comment, LAB_COMMENTS)], schema=SCHEMAS["labevents"])
