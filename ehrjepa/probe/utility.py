"""The PhysioNet/CinC 2019 challenge's normalised utility of hourly sepsis alarms, and a per-stay view.

Source of the definition: M. A. Reyna et al., "Early Prediction of Sepsis From Clinical Data: the
PhysioNet/Computing in Cardiology Challenge 2019", Critical Care Medicine 48(2):210-217, 2020
(section "Scoring", and its utility figure), and the challenge's published evaluation description
(physionet.org/content/challenge-2019, "Evaluation"). Written here from that definition.

Each hour t of a stay gets a binary prediction (an alarm or not). For a septic stay, t_sepsis is the
clinical onset; the challenge's labels start 6 hours before it, so t_sepsis = the first labelled
hour + 6 (stays.parquet's `sepsis_onset_hour`). With d = t - t_sepsis, an alarm earns

    d < -12           -0.05 (a false alarm, too early: U_FP)
    -12 <= d <= -6    rising linearly from 0 at d = -12 to 1 (U_TP_MAX) at d = -6: max(d/6 + 2, U_FP)
    -6 < d <= 3       falling linearly from 1 at d = -6 to 0 at d = 3: -d/9 + 1/3
    d > 3             0 (the onset is past; the hour no longer counts)

and no alarm earns 0 for d <= -6, falling linearly from 0 at d = -6 to -2 (U_FN_MIN) at d = 3
(-2d/9 - 4/3; a missed or late alarm), and 0 for d > 3. For a stay never septic an alarm earns
-0.05 and no alarm 0 in every hour. The total U over every hour of every stay is normalised as

    U_norm = (U - U_inaction) / (U_optimal - U_inaction)

where U_inaction is the total with no alarm at all and U_optimal the total of the predictor that
alarms exactly in the hours where an alarm earns more than none (d in (-12, 3] of septic stays; at
d = -12 both earn 0). So a perfect predictor scores 1 and never alarming 0; a predictor can score
below 0.
"""
from __future__ import annotations

import numpy as np

U_FP = -0.05       # an alarm in a stay never septic, or more than 12 h before the onset
U_TN = 0.0         # no alarm where none is due
U_TP_MAX = 1.0     # an alarm 6 h before the onset (the labels' first hour)
U_FN_MIN = -2.0    # no alarm 3 h after the onset
DT_EARLY = -12     # hours relative to t_sepsis: the reward for an alarm starts rising here ...
DT_OPTIMAL = -6    # ... peaks here (the challenge's labels start here) ...
DT_LATE = 3        # ... and is gone here; after it the hours count 0 whatever is predicted
LABEL_LEAD = -DT_OPTIMAL  # t_sepsis = first labelled hour + LABEL_LEAD


def hour_utilities(hour: np.ndarray, onset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(utility of an alarm, utility of no alarm) float64 [n] of hours `hour` whose stays have onset
    `onset` (t_sepsis in the stay's hours; NaN for a stay never septic)."""
    hour = np.asarray(hour, dtype=np.float64)
    onset = np.asarray(onset, dtype=np.float64)
    septic = ~np.isnan(onset)
    d = np.where(septic, hour - np.where(septic, onset, 0.0), -np.inf)
    rise = U_TP_MAX / (DT_OPTIMAL - DT_EARLY)          # 1/6 per hour from d = -12
    fall = U_TP_MAX / (DT_LATE - DT_OPTIMAL)           # 1/9 per hour after d = -6
    miss = U_FN_MIN / (DT_LATE - DT_OPTIMAL)           # -2/9 per hour after d = -6
    alarm = np.where(d <= DT_OPTIMAL, np.maximum(rise * (d - DT_EARLY), U_FP),
                     np.where(d <= DT_LATE, U_TP_MAX - fall * (d - DT_OPTIMAL), 0.0))
    quiet = np.where((d > DT_OPTIMAL) & (d <= DT_LATE), miss * (d - DT_OPTIMAL), U_TN)
    alarm = np.where(septic, alarm, U_FP)
    return alarm, quiet


def onsets_of(stay: np.ndarray, onset_by_stay: np.ndarray) -> np.ndarray:
    """The onset of each hour's stay: onset_by_stay[stay] (float64, NaN where never septic)."""
    return np.asarray(onset_by_stay, dtype=np.float64)[np.asarray(stay, dtype=np.int64)]


def utility_totals(alarm: np.ndarray, hour: np.ndarray, onset: np.ndarray) -> dict[str, float]:
    """{"utility", "inaction", "optimal", "normalized"} of 0/1 `alarm` per hour (module docstring);
    normalized is NaN when optimal == inaction (no septic hour that rewards an alarm)."""
    alarm = np.asarray(alarm, dtype=bool)
    u_alarm, u_quiet = hour_utilities(hour, onset)
    total = float(np.where(alarm, u_alarm, u_quiet).sum())
    inaction = float(u_quiet.sum())
    optimal = float(np.maximum(u_alarm, u_quiet).sum())
    span = optimal - inaction
    return {"utility": total, "inaction": inaction, "optimal": optimal,
            "normalized": (total - inaction) / span if span > 0 else float("nan")}


def normalized_utility(alarm: np.ndarray, hour: np.ndarray, onset: np.ndarray) -> float:
    """The challenge's normalised utility of 0/1 `alarm` at `hour` of stays with onset `onset` per hour."""
    return utility_totals(alarm, hour, onset)["normalized"]


def utility_curve(score: np.ndarray, hour: np.ndarray, onset: np.ndarray):
    """(thresholds, normalized utility) of alarming where score >= threshold, for every distinct
    score as the threshold (descending), plus +inf (never alarm) first; one sort, no loop."""
    score = np.asarray(score, dtype=np.float64)
    u_alarm, u_quiet = hour_utilities(hour, onset)
    inaction = u_quiet.sum()
    span = np.maximum(u_alarm, u_quiet).sum() - inaction
    order = np.argsort(-score, kind="stable")
    s, gain = score[order], (u_alarm - u_quiet)[order]
    last = np.r_[s[1:] != s[:-1], True]                # the last index of each tie group
    gained = np.cumsum(gain)[last]
    thresholds = np.r_[np.inf, s[last]]
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.r_[0.0, gained] / span if span > 0 else np.full(len(thresholds), np.nan)
    return thresholds, normalized


def best_threshold(score: np.ndarray, hour: np.ndarray, onset: np.ndarray) -> tuple[float, float]:
    """(threshold, its normalised utility): the alarm threshold (alarm where score >= threshold)
    with the highest normalised utility on these hours (e.g. the validation split's); ties go to the
    higher threshold (fewer alarms). +inf (never alarm) when nothing beats no alarms."""
    thresholds, normalized = utility_curve(score, hour, onset)
    if np.isnan(normalized).all():
        return float("inf"), float("nan")
    i = int(np.nanargmax(normalized))
    return float(thresholds[i]), float(normalized[i])


def stay_utilities(alarm, stay: np.ndarray, hour: np.ndarray, onset: np.ndarray, n_stays: int):
    """(utility, inaction, optimal) float64 [n_stays]: each stay's sums (for a bootstrap over stays:
    the normalised utility of a resample is (w @ utility - w @ inaction) / (w @ optimal - w @ inaction))."""
    alarm = np.asarray(alarm, dtype=bool)
    u_alarm, u_quiet = hour_utilities(hour, onset)
    stay = np.asarray(stay, dtype=np.int64)
    got = np.bincount(stay, np.where(alarm, u_alarm, u_quiet), minlength=n_stays)
    none = np.bincount(stay, u_quiet, minlength=n_stays)
    best = np.bincount(stay, np.maximum(u_alarm, u_quiet), minlength=n_stays)
    return got, none, best


def stay_view(alarm: np.ndarray, stay: np.ndarray, hour: np.ndarray, onset_by_stay: np.ndarray) -> dict:
    """The per-stay reading of hourly alarms.

    alarm, stay, hour: per hour (stay: an index into onset_by_stay, hours of a stay ascending and
    consecutive); onset_by_stay: t_sepsis per stay (NaN: never septic). Returns
    - "septic_stays", "stays", "stay_days" (hours / 24);
    - "warned_6_12h": the share of septic stays with an alarm in some hour of [t_sepsis - 12,
      t_sepsis - 6] (the hours of full or rising reward);
    - "warned_before_onset": the share with an alarm at some hour <= t_sepsis;
    - "median_lead_hours": over the septic stays alarmed by t_sepsis + 3, the median of t_sepsis
      minus the first alarm hour at or after t_sepsis - 12 (NaN when none);
    - "false_alarms_per_100_stay_days": alarm episodes (maximal runs of consecutive alarm hours)
      whose first hour is not in [t_sepsis - 12, t_sepsis + 3] of a septic stay, per 100 stay-days;
    - "false_alarm_hours_per_100_stay_days": the hours of those outside hours (alarms earning U_FP).
    """
    alarm = np.asarray(alarm, dtype=bool)
    stay = np.asarray(stay, dtype=np.int64)
    hour = np.asarray(hour, dtype=np.float64)
    onset_by_stay = np.asarray(onset_by_stay, dtype=np.float64)
    onset = onset_by_stay[stay]
    d = np.where(np.isnan(onset), -np.inf, hour - np.where(np.isnan(onset), 0.0, onset))
    rewarded = (d >= DT_EARLY) & (d <= DT_LATE)      # alarms here are not false
    stays_here = np.unique(stay)
    septic = stays_here[~np.isnan(onset_by_stay[stays_here])]
    n_stays = len(onset_by_stay)

    def any_per_stay(mask):
        return np.bincount(stay[mask], minlength=n_stays) > 0

    warned = any_per_stay(alarm & (d >= DT_EARLY) & (d <= DT_OPTIMAL))[septic]
    by_onset = any_per_stay(alarm & (d <= 0))[septic]
    early = alarm & rewarded
    first = np.full(n_stays, np.inf)
    np.minimum.at(first, stay[early], d[early])
    leads = -first[septic][np.isfinite(first[septic])]
    start = alarm & ~np.r_[False, alarm[:-1] & (stay[1:] == stay[:-1]) & (hour[1:] == hour[:-1] + 1)]
    days = len(hour) / 24.0
    per_100 = 100.0 / days if days > 0 else float("nan")
    return {"stays": int(len(stays_here)), "septic_stays": int(len(septic)), "stay_days": float(days),
            "warned_6_12h": float(warned.mean()) if len(septic) else float("nan"),
            "warned_before_onset": float(by_onset.mean()) if len(septic) else float("nan"),
            "median_lead_hours": float(np.median(leads)) if len(leads) else float("nan"),
            "false_alarms_per_100_stay_days": float((start & ~rewarded).sum() * per_100),
            "false_alarm_hours_per_100_stay_days": float((alarm & ~rewarded).sum() * per_100)}
