"""The outcome labels (ehrjepa/data/outcomes.py) on hand-built stays and admissions: readmit_icu,
readmit_30d (29 vs 31 days, deaths, follow-up), phenotype prefix matching, the phenotype file."""
import numpy as np
import pytest

from ehrjepa.data.outcomes import (holding_admission, load_phenotypes, phenotypes, readmit_30d,
                                   readmit_icu)
from ehrjepa.data.readers import MISSING

H, D = 3600, 86400
NONE = MISSING


def ints(*xs):
    return np.array(xs, np.int64)


def test_readmit_icu_second_stay_death_and_unknown_admission():
    # admission 1: two stays, the second starting after the first ends -> 1, 0 (the last)
    # admission 2: one stay, the patient dies 5 h after ICU discharge -> -1 (death in the stay)
    # admission 3: one stay, death 7 h after discharge -> 0 (survived the stay)
    # admission 4: a stay, then a death in a second stay: the first has a later stay -> 1
    # admission 9: not among the admissions -> -1
    hadm = ints(1, 1, 2, 3, 4, 4, 9)
    t_in = ints(0, 10 * H, 0, 0, 0, 20 * H, 0)
    t_out = ints(5 * H, 12 * H, 5 * H, 5 * H, 5 * H, 30 * H, 5 * H)
    adm = ints(1, 2, 3, 4)
    death = ints(NONE, 10 * H, 12 * H, 30 * H)
    got = readmit_icu(hadm, t_in, t_out, adm, death)
    assert got.dtype == np.int8
    assert got.tolist() == [1, 0, -1, 0, 1, -1, -1]


def test_readmit_icu_overlapping_stays_and_the_6_hour_edge():
    hadm = ints(1, 1, 2)
    t_in = ints(0, 4 * H, 0)  # the second stay of admission 1 starts before the first ends
    t_out = ints(5 * H, 8 * H, 5 * H)
    got = readmit_icu(hadm, t_in, t_out, ints(1, 2), ints(NONE, 11 * H))  # exactly outtime + 6 h
    assert got.tolist() == [0, 0, -1]


def adms(*rows):
    """(subject, hadm, admittime, dischtime, died) rows -> arrays."""
    cols = list(zip(*rows))
    return [np.array(c, np.int64) for c in cols]


def test_readmit_30d_window_death_and_follow_up():
    subj, hadm, t_in, t_out, died = adms(
        (1, 10, 0, 2 * D, 0), (1, 11, 31 * D, 33 * D, 0),  # 29 days after discharge: 1
        (2, 20, 0, 2 * D, 0), (2, 21, 33 * D, 35 * D, 0),  # 31 days: 0 (a later record)
        (3, 30, 0, 2 * D, 1), (3, 31, 10 * D, 11 * D, 0),  # died in the admission: -1
        (4, 40, 0, 2 * D, 0),                               # no record after: -1
        (5, 50, 0, 2 * D, 0),                               # died (dod) at day 40: 0
        (6, 60, 0, 2 * D, 0),                               # died at day 20, no readmission: -1
        (7, 70, 0, 2 * D, 0), (7, 71, 32 * D, 40 * D, 0))   # exactly 30 days after: 1
    death_subject, death_time = ints(5, 6, 2), ints(40 * D, 20 * D, 100 * D)
    stays = ints(10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 99, NONE)
    got = readmit_30d(stays, subj, hadm, t_in, t_out, died, death_subject, death_time)
    assert got.dtype == np.int8
    # 11: nothing after day 33+30; 21: death at day 100 > 35+30; 31: nothing after 41; 71: none
    assert got.tolist() == [1, -1, 0, 0, -1, -1, -1, 0, -1, 1, -1, -1]


def test_readmit_30d_ignores_other_subjects_and_unknown_times():
    subj, hadm, t_in, t_out, died = adms(
        (1, 10, 0, 2 * D, 0),
        (2, 20, 10 * D, 12 * D, 0), (2, 21, 100 * D, 101 * D, 0),  # subject 2's, not 1's
        (3, 30, 0, NONE, 0), (3, 31, 5 * D, 6 * D, 0),             # no dischtime: -1
        (4, 40, 0, 2 * D, -1), (4, 41, 5 * D, 6 * D, 0))           # death unknown: -1
    got = readmit_30d(ints(10, 20, 30, 40), subj, hadm, t_in, t_out, died, ints(), ints())
    assert got.tolist() == [-1, 0, -1, -1]


def test_holding_admission():
    subj, t_in, t_out = ints(1, 1, 2), ints(0, 10 * D, 0), ints(5 * D, 12 * D, 5 * D)
    got = holding_admission(subj, t_in, t_out, ints(1, 1, 1, 2, 3, 1),
                            ints(5 * D, 7 * D, 10 * D, D, D, NONE))
    assert got.tolist() == [0, -1, 1, 2, -1, -1]


def test_phenotype_prefixes():
    prefixes = {"sepsis": ("A40", "A41", "R652"), "aki": ("N17",), "shock": ("R57", "R6521")}
    dx_hadm = ints(1, 1, 2, 3, 3)
    codes = ["A419", "N179", "E119", "R65.21", " r570 "]  # dots, spaces and case are forgiven
    got = phenotypes(ints(1, 2, 3, 4, NONE), dx_hadm, codes, prefixes)
    assert list(got) == ["phenotype_sepsis", "phenotype_aki", "phenotype_shock"]
    assert got["phenotype_sepsis"].tolist() == [1, 0, 1, -1, -1]  # R6521 starts with R652
    assert got["phenotype_aki"].tolist() == [1, 0, 0, -1, -1]
    assert got["phenotype_shock"].tolist() == [0, 0, 1, -1, -1]
    assert got["phenotype_aki"].dtype == np.int8
    # A4 is not A41: a prefix must match from the start, whole
    assert phenotypes(ints(1), ints(1), ["A4"], {"s": ("A41",)})["phenotype_s"].tolist() == [0]


def test_the_shipped_phenotype_file():
    names, path = load_phenotypes()
    assert path.name == "phenotypes.yaml"
    assert names == {"sepsis": ("A40", "A41", "R652"), "aki": ("N17",), "arf": ("J960", "J962"),
                     "heart_failure": ("I50",), "shock": ("R57", "R6521")}


@pytest.mark.parametrize("text, match", [
    ("phenotypes: {}\n", "expected a mapping"),
    ("phenotypes:\n  sepsis: A41\n", "phenotype 'sepsis': expected a non-empty list"),
    ("phenotypes:\n  bad name: [A41]\n", "'bad name' is not a plain identifier"),
    ("phenotypes: [\n", "not valid YAML"),
])
def test_bad_phenotype_file(tmp_path, text, match):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        load_phenotypes(path)
    assert "\n" not in str(e.value) and "p.yaml" in str(e.value)
