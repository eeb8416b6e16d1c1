"""Numba converters of one CSV field's bytes to int64, float64 or int64 seconds, without Python
strings; shared by the tokenizer, the fused event scan and parquet text columns.

Conventions every reader follows (csv, csv.gz and parquet alike):
- KIND_INT: int64, MISSING where the field is empty, BAD where it is not an integer;
- KIND_FLOAT: float64, NaN where the field is empty or not a number;
- KIND_TIME: int64 seconds since 1970-01-01, MISSING where empty, BAD where unparseable.
"""
from __future__ import annotations

import numba as nb
import numpy as np

KIND_INT, KIND_FLOAT, KIND_TIME = 0, 1, 2
MISSING = np.iinfo(np.int64).min  # empty field
BAD = MISSING + 1  # field present but not parseable


@nb.njit(cache=True, error_model="numpy")
def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's public algorithm)."""
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@nb.njit(cache=True, error_model="numpy")
def _digits(buf, i, n):
    """Value of n ASCII digits at buf[i:i+n], or -1 if any is not a digit."""
    v = 0
    for k in range(n):
        c = buf[i + k] - 48
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
    return v


@nb.njit(cache=True, error_model="numpy")
def parse_int(buf, s, e):
    """int64 of buf[s:e]: optional sign and digits; MISSING if empty, BAD otherwise."""
    if s >= e:
        return MISSING
    neg = False
    if buf[s] == 45 or buf[s] == 43:  # - +
        neg = buf[s] == 45
        s += 1
        if s >= e or e - s > 18:
            return BAD
    elif e - s > 18:
        return BAD
    v = 0
    for i in range(s, e):
        c = buf[i] - 48
        if c < 0 or c > 9:
            return BAD
        v = v * 10 + c
    return -v if neg else v


_POW10 = np.array([10.0 ** k for k in range(23)])


@nb.njit(cache=True, inline="always", error_model="numpy")
def _mantissa_digits(buf, i, e, mant, nd, seen, exp10, frac):
    """Fold the digits from buf[i] on into the mantissa: the first 18 significant ones go in, an
    integer digit (frac 0) past them scales by ten, a fraction digit (frac 1) within them divides
    by ten. Returns (index after the digits, mant, nd significant, seen digits, exp10)."""
    while i < e:
        c = buf[i] - 48
        if c < 0 or c > 9:
            break
        seen += 1
        if nd < 18:
            if mant != 0 or c != 0:
                nd += 1
            mant = mant * 10 + c
            exp10 -= frac
        else:
            exp10 += 1 - frac
        i += 1
    return i, mant, nd, seen, exp10


@nb.njit(cache=True, error_model="numpy")
def parse_float(buf, s, e):
    """float64 of buf[s:e] ([+-]digits[.digits][(e|E)[+-]digits]); NaN if empty or not a number.

    Correctly rounded for up to 15-16 significant digits with small exponents (the mantissa and the
    power of ten are exact, so one multiply or divide rounds once); longer inputs are truncated to
    18 significant digits.
    """
    if s >= e:
        return np.nan
    neg = False
    if buf[s] == 45 or buf[s] == 43:
        neg = buf[s] == 45
        s += 1
    mant = 0
    exp10 = 0
    nd = 0  # significant digits taken
    seen = 0  # digits seen at all
    i, mant, nd, seen, exp10 = _mantissa_digits(buf, s, e, mant, nd, seen, exp10, 0)
    if i < e and buf[i] == 46:  # .
        i, mant, nd, seen, exp10 = _mantissa_digits(buf, i + 1, e, mant, nd, seen, exp10, 1)
    if seen == 0:
        return np.nan
    if i < e and (buf[i] == 101 or buf[i] == 69):  # e E
        i += 1
        eneg = False
        if i < e and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        if i >= e:
            return np.nan
        ev = 0
        while i < e:
            c = buf[i] - 48
            if c < 0 or c > 9:
                return np.nan
            if ev < 100000:
                ev = ev * 10 + c
            i += 1
        exp10 += -ev if eneg else ev
    if i != e:
        return np.nan
    v = float(mant)
    if exp10 == 0:
        pass
    elif 0 < exp10 <= 22:
        v = v * _POW10[exp10]
    elif -22 <= exp10 < 0:
        v = v / _POW10[-exp10]
    elif mant == 0:
        v = 0.0
    else:  # rare: scale to one digit before the point so the power of ten stays finite
        p = exp10 + nd - 1
        v = v / 10.0 ** (nd - 1)
        if p > 308:
            v = np.inf
        elif p < -340:
            v = 0.0
        elif p < -300:
            v = v * 10.0 ** (p + 300) * 1e-300
        elif p > 300:
            v = v * 10.0 ** (p - 300) * 1e300
        else:
            v = v * 10.0 ** p
    return -v if neg else v


@nb.njit(cache=True, error_model="numpy")
def parse_time(buf, s, e):
    """Seconds since 1970 of 'YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]]'; MISSING if empty, BAD otherwise.

    Fractional seconds are truncated (the data are in whole seconds).
    """
    n = e - s
    if n <= 0:
        return MISSING
    if n < 10 or buf[s + 4] != 45 or buf[s + 7] != 45:
        return BAD
    y = _digits(buf, s, 4)
    mo = _digits(buf, s + 5, 2)
    d = _digits(buf, s + 8, 2)
    if y < 0 or mo < 1 or mo > 12 or d < 1:
        return BAD
    mdays = 31
    if mo == 4 or mo == 6 or mo == 9 or mo == 11:
        mdays = 30
    elif mo == 2:
        mdays = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    if d > mdays:
        return BAD
    hh = 0
    mi = 0
    ss = 0
    if n > 10:
        if n < 16 or (buf[s + 10] != 32 and buf[s + 10] != 84) or buf[s + 13] != 58:
            return BAD
        hh = _digits(buf, s + 11, 2)
        mi = _digits(buf, s + 14, 2)
        if hh < 0 or hh > 23 or mi < 0 or mi > 59:
            return BAD
        if n > 16:
            if n < 19 or buf[s + 16] != 58:
                return BAD
            ss = _digits(buf, s + 17, 2)
            if ss < 0 or ss > 59:
                return BAD
            if n > 19:
                if buf[s + 19] != 46 or n == 20:
                    return BAD
                if _digits(buf, s + 20, n - 20) < 0:
                    return BAD
    return _days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss


_MDAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


@nb.njit(cache=True, inline="always", error_model="numpy")
def parse_time_fast(buf, s, e):
    """parse_time for the common 19-byte 'YYYY-MM-DD HH:MM:SS' with few branches; others go to
    parse_time. Digits are checked all at once ((d | (9 - d)) < 0 for any byte outside '0'-'9')."""
    if e - s != 19 or buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58 \
            or buf[s + 16] != 58 or (buf[s + 10] != 32 and buf[s + 10] != 84):
        return parse_time(buf, s, e)
    y0 = np.int64(buf[s]) - 48
    y1 = np.int64(buf[s + 1]) - 48
    y2 = np.int64(buf[s + 2]) - 48
    y3 = np.int64(buf[s + 3]) - 48
    m0 = np.int64(buf[s + 5]) - 48
    m1 = np.int64(buf[s + 6]) - 48
    d0 = np.int64(buf[s + 8]) - 48
    d1 = np.int64(buf[s + 9]) - 48
    h0 = np.int64(buf[s + 11]) - 48
    h1 = np.int64(buf[s + 12]) - 48
    i0 = np.int64(buf[s + 14]) - 48
    i1 = np.int64(buf[s + 15]) - 48
    s0 = np.int64(buf[s + 17]) - 48
    s1 = np.int64(buf[s + 18]) - 48
    chk = (y0 | y1 | y2 | y3 | m0 | m1 | d0 | d1 | h0 | h1 | i0 | i1 | s0 | s1
           | (9 - y0) | (9 - y1) | (9 - y2) | (9 - y3) | (9 - m0) | (9 - m1) | (9 - d0) | (9 - d1)
           | (9 - h0) | (9 - h1) | (9 - i0) | (9 - i1) | (9 - s0) | (9 - s1))
    y = y0 * 1000 + y1 * 100 + y2 * 10 + y3
    mo = m0 * 10 + m1
    d = d0 * 10 + d1
    hh = h0 * 10 + h1
    mi = i0 * 10 + i1
    ss = s0 * 10 + s1
    if chk < 0 or mo < 1 or mo > 12 or hh > 23 or mi > 59 or ss > 59 or d < 1:
        return BAD
    leap = 1 if (mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 0
    if d > _MDAYS[mo] + leap:
        return BAD
    # days from civil (Hinnant), years >= 0 so the era is y // 400
    yy = y - 1 if mo <= 2 else y
    era = yy // 400
    yoe = yy - era * 400
    mp = mo - 3 if mo > 2 else mo + 9
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * mp + 2) // 5 + d - 1
    return (era * 146097 + doe - 719468) * 86400 + hh * 3600 + mi * 60 + ss
