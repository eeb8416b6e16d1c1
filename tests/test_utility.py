"""The challenge's normalised utility (ehrjepa/probe/utility.py) on stays computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from ehrjepa.probe.utility import (best_threshold, hour_utilities, normalized_utility, stay_utilities, stay_view,
                                   utility_curve, utility_totals)

# stay 0: septic, 20 hours, first labelled hour 10, so t_sepsis = 16; stay 1: never septic, 10 hours
ONSET_BY_STAY = np.array([16.0, np.nan])
STAY = np.r_[np.zeros(20, int), np.ones(10, int)]
HOUR = np.r_[np.arange(20), np.arange(10)]
ONSET = ONSET_BY_STAY[STAY]


def test_hour_utilities_by_hand():
    alarm, quiet = hour_utilities(HOUR, ONSET)
    # septic stay, d = t - 16 from -16 to 3
    assert np.allclose(alarm[:4], -0.05)                           # d = -16..-13: too early
    assert alarm[4] == pytest.approx(0.0)                          # d = -12
    assert np.allclose(alarm[5:11], np.arange(1, 7) / 6)           # d = -11..-6: 1/6 .. 1
    assert np.allclose(alarm[11:20], np.arange(8, -1, -1) / 9)     # d = -5..3: 8/9 .. 0
    assert np.allclose(quiet[:11], 0.0)
    assert np.allclose(quiet[11:20], -np.arange(2, 20, 2) / 9)     # d = -5..3: -2/9 .. -2
    # never septic: -0.05 per alarm, 0 without
    assert np.allclose(alarm[20:], -0.05) and np.allclose(quiet[20:], 0.0)
    # past t_sepsis + 3 nothing counts
    a, q = hour_utilities(np.array([20.0, 30.0]), np.array([16.0, 16.0]))
    assert np.allclose(a, 0.0) and np.allclose(q, 0.0)


def test_perfect_predictor_scores_one_and_never_alarming_zero():
    alarm_u, quiet_u = hour_utilities(HOUR, ONSET)
    perfect = alarm_u > quiet_u
    assert normalized_utility(perfect, HOUR, ONSET) == pytest.approx(1.0)
    assert normalized_utility(np.zeros(len(HOUR), bool), HOUR, ONSET) == pytest.approx(0.0)
    # the labels (alarm from t_sepsis - 6 on) are not perfect: they miss the rising reward
    labels = ~np.isnan(ONSET) & (HOUR >= ONSET - 6)
    assert normalized_utility(labels, HOUR, ONSET) < 1.0


def test_always_alarming_by_hand():
    # septic stay: 4 x -0.05 + 0 + (1+2+3+4+5+6)/6 + (8+7+...+0)/9 = -0.2 + 3.5 + 4 = 7.3
    # never-septic stay: 10 x -0.05 = -0.5; U = 6.8
    # inaction: septic stay -(2+4+...+18)/9 = -10; never septic 0; U_inaction = -10
    # optimal: 3.5 + 4 = 7.5 (the septic stay); 0 (the other)
    totals = utility_totals(np.ones(len(HOUR), bool), HOUR, ONSET)
    assert totals["utility"] == pytest.approx(6.8)
    assert totals["inaction"] == pytest.approx(-10.0)
    assert totals["optimal"] == pytest.approx(7.5)
    assert totals["normalized"] == pytest.approx((6.8 + 10.0) / (7.5 + 10.0))  # 0.96


def test_a_late_alarm_by_hand():
    # alarms only at d = 0..3 (hours 16..19) of the septic stay:
    # alarms earn -d/9 + 1/3 at d = 0..3: 3/9, 2/9, 1/9, 0 -> 6/9
    # quiet hours d = -5..-1 earn -(2+4+6+8+10)/9 = -30/9; U = -24/9; normalised (-24/9 + 10) / 17.5
    alarm = (STAY == 0) & (HOUR >= 16)
    assert normalized_utility(alarm, HOUR, ONSET) == pytest.approx((-24 / 9 + 10) / 17.5)


def test_no_septic_stay_gives_nan():
    hour, onset = np.arange(5.0), np.full(5, np.nan)
    assert np.isnan(normalized_utility(np.ones(5, bool), hour, onset))


def test_best_threshold_is_the_best_on_the_hours_given():
    rng = np.random.default_rng(0)
    score = rng.normal(size=len(HOUR)) + (ONSET - HOUR <= 12).astype(float)
    thresholds, curve = utility_curve(score, HOUR, ONSET)
    for t, u in zip(thresholds, curve):
        assert u == pytest.approx(normalized_utility(score >= t, HOUR, ONSET))
    t, u = best_threshold(score, HOUR, ONSET)
    assert u == pytest.approx(max(normalized_utility(score >= c, HOUR, ONSET) for c in np.r_[np.inf, score]))
    # a score that ranks the rewarded hours first reaches 1
    alarm_u, quiet_u = hour_utilities(HOUR, ONSET)
    t, u = best_threshold((alarm_u > quiet_u).astype(float), HOUR, ONSET)
    assert u == pytest.approx(1.0) and t == pytest.approx(1.0)


def test_stay_sums_add_up():
    alarm = HOUR % 3 == 0
    got, none, best = stay_utilities(alarm, STAY, HOUR, ONSET, 2)
    totals = utility_totals(alarm, HOUR, ONSET)
    assert got.sum() == pytest.approx(totals["utility"])
    assert none.sum() == pytest.approx(totals["inaction"])
    assert best.sum() == pytest.approx(totals["optimal"])


def test_stay_view_by_hand():
    # septic stay alarms at hours 5 and 6 (d = -11, -10: warned 6-12 h ahead) ; the other stay
    # alarms at hours 2, 3 (one episode) and 7 (another): 2 false alarms, 3 false alarm hours
    alarm = np.zeros(len(HOUR), bool)
    alarm[[5, 6]] = True
    alarm[[22, 23, 27]] = True
    view = stay_view(alarm, STAY, HOUR, ONSET_BY_STAY)
    days = 30 / 24
    assert view["septic_stays"] == 1 and view["stays"] == 2
    assert view["warned_6_12h"] == pytest.approx(1.0)
    assert view["warned_before_onset"] == pytest.approx(1.0)
    assert view["median_lead_hours"] == pytest.approx(11.0)
    assert view["false_alarms_per_100_stay_days"] == pytest.approx(2 * 100 / days)
    assert view["false_alarm_hours_per_100_stay_days"] == pytest.approx(3 * 100 / days)
    # an alarm at hour 2 of the septic stay only (d = -14): false, and not warned
    alarm = np.zeros(len(HOUR), bool)
    alarm[2] = True
    view = stay_view(alarm, STAY, HOUR, ONSET_BY_STAY)
    assert view["warned_6_12h"] == 0.0 and view["false_alarms_per_100_stay_days"] == pytest.approx(100 / days)
    assert np.isnan(view["median_lead_hours"])
