"""The latent severity of an ICU stay and the outcomes decided along it.

Each ICU stay s has a severity x_s(t) at hours t = 0, 1, ... since ICU intime (0 is a typical
ICU patient, higher is sicker):

    x_s(t) = b_s + m_s * t + J_s(t) + e_s(t)

    b_s   initial severity ~ Normal(0.2 + 0.015 * (age - 65), 0.8)
    m_s   drift per hour   ~ Normal(-0.04, 0.03): most patients improve, some worsen
    J_s   shocks: Bernoulli(1/60) per hour, size ~ Exponential(mean 0.8), each decaying as
          exp(-(t - t_shock) / r_s) with a per-stay recovery time r_s ~ LogNormal(log 8 h, 0.5)
    e_s   AR(1) noise: e(t) = 0.9 e(t-1) + Normal(0, 0.1)

The outcomes are decided hour by hour along this path, so they depend on the whole trajectory
(its level, slope and how fast shocks fade), not on any single hour:

    damage     D_s(t) = sum over u <= t of max(x_s(u) - 1, 0)   (area of the curve above 1)
    ICU death  at the first hour with D_s(t) >= K_s, tolerance
               K_s = 40 * exp(Normal(0, 0.3) - 0.02 * (age - 65))
    discharge  ready at the first hour t >= 8 whose 6-hour mean of x_s is below -1, then out
               after a further delay ~ Uniform{0..23} h (death during the delay still counts);
               stays last at most MAX_STAY_HOURS (40 days)
    ward death after an alive ICU discharge, with probability 0.5 * (D_s(end) / K_s) ** 2,
               2 h to 7 days later in the same admission

so in-hospital death (hospital_expire_flag) and ICU length of stay are functions of the area
and slope of x_s over the first 24 h and later. Readmissions follow how sick the stay was,
its sickness S_s = peak_s + 2 D_s(end) / K_s (peak_s: the highest smooth severity b + m t + J
of the stay):

    second ICU stay   in the same admission, after a surviving first stay, with probability
                      sigmoid(-3.1 + 0.9 S_s) (about 10 % of first stays); it gets its own
                      path, and the admission's death may come from it
    30-day readmission  an admission left alive is followed by a new (ward) admission 6 h to
                      29 days after its discharge with probability
                      sigmoid(-3.2 + 0.6 S_last + 0.015 (age - 65)), S_last of its last stay;
                      other admissions are months apart (LogNormal around 150 days)

The admission's diagnoses (ICD-10-CM) are drawn from the same course; see diagnoses.py.
Tuned to about 12 % deaths per stay and an ICU length of stay with median about 2 days and a
long tail (see tests/test_synth.py).
Measured on 10,000 patients (seed 0, stays >= 24 h, logistic regression on hourly means of the
charted HR, SBP, RR and SpO2 over hours 0-23, AUROC for in-hospital death on a held-out half):
last hour 0.79, summary statistics (mean, min, max, last) 0.82, last hour + slope 0.85, all 24
hours 0.87: reading the sequence beats a snapshot.
"""
from __future__ import annotations

import numpy as np

MAX_STAY_HOURS = 960  # longest ICU stay simulated (40 days)
VENT_SEVERITY = 0.8  # ventilated while the smooth severity is above this (chartevents.py)


def simulate_stays(rng: np.random.Generator, age: np.ndarray) -> dict:
    """Severity paths x [n, MAX_STAY_HOURS] and outcomes of n ICU stays of patients aged `age`.

    Returns x, the smooth part (without the AR noise) `x_smooth`, the parameters b, m, r, K,
    `hours` (index of the last hour of the stay; its length is in (hours, hours + 1] h),
    `died` (in the ICU), `damage_frac` (D(end) / K), `peak` (the highest smooth severity of the
    stay) and `vent_hours` (hours of the stay with smooth severity above VENT_SEVERITY).
    """
    n, H = len(age), MAX_STAY_HOURS
    age = np.asarray(age, np.float64)
    b = rng.normal(0.2 + 0.015 * (age - 65), 0.8)
    m = rng.normal(-0.04, 0.03, n)
    r = np.exp(rng.normal(np.log(8.0), 0.5, n))
    K = 40.0 * np.exp(rng.normal(0.0, 0.3, n) - 0.02 * (age - 65))
    # hour-major [H, n] so that each step of the recursions reads contiguous memory
    shock = np.zeros((H, n))
    hit = rng.random((H, n)) < 1 / 60
    shock[hit] = rng.exponential(0.8, int(hit.sum()))
    J = shock
    e = rng.normal(0.0, 0.1, (H, n))
    decay = np.exp(-1.0 / r)
    e[0] /= np.sqrt(1 - 0.81)  # start the AR(1) noise in its stationary distribution
    for t in range(1, H):  # recursions over hours, vectorised over stays, in place
        J[t] += decay * J[t - 1]
        e[t] += 0.9 * e[t - 1]
    J, e = J.T, e.T
    x_smooth = b[:, None] + m[:, None] * np.arange(H) + J
    x = x_smooth + e

    damage = np.cumsum(np.maximum(x - 1.0, 0.0), axis=1)
    dead = damage >= K[:, None]
    death_hour = np.where(dead.any(1), dead.argmax(1), H)
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(x, axis=1)], axis=1)
    mean6 = (csum[:, 6:] - csum[:, :-6]) / 6.0  # mean6[:, j] = mean of hours j .. j + 5
    ready = np.zeros((n, H), bool)
    ready[:, 8:] = mean6[:, 3:] < -1.0  # trailing 6-hour mean at hours 8 ..
    ready_hour = np.where(ready.any(1), ready.argmax(1), H)
    discharge_hour = ready_hour + rng.integers(0, 24, n)
    hours = np.minimum(np.minimum(death_hour, discharge_hour), H - 1)
    died = death_hour <= np.minimum(discharge_hour, H - 1)
    damage_frac = damage[np.arange(n), hours] / K
    inside = np.arange(H) <= hours[:, None]
    peak = np.where(inside, x_smooth, -np.inf).max(1)
    vent_hours = (inside & (x_smooth > VENT_SEVERITY)).sum(1)
    return dict(x=x, x_smooth=x_smooth, b=b, m=m, r=r, K=K, hours=hours, died=died,
                damage_frac=damage_frac, peak=peak, vent_hours=vent_hours)


def sickness(sim: dict) -> np.ndarray:
    """How sick each stay was over its course: its peak smooth severity + 2 D(end) / K."""
    return sim["peak"] + 2.0 * sim["damage_frac"]


def p_second_stay(sick: np.ndarray) -> np.ndarray:
    """Probability that a surviving stay is followed by a second ICU stay in its admission."""
    return _sigmoid(-3.1 + 0.9 * sick)


def p_readmit_30d(sick: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Probability that an admission left alive is followed by a new one within 30 days."""
    return _sigmoid(-3.2 + 0.6 * sick + 0.015 * (np.asarray(age) - 65))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))
