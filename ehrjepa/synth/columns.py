"""Arrow columns from numpy arrays, as the tables need them (timestamps, nullable ints and
floats, dictionary-encoded strings, MIMIC's `value` text), and the index helpers the generators
share (ragged groups, random picks)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ehrjepa.synth.schemas import TS


def choice(rng, options, n: int) -> pa.Array:
    """n draws of (values, probabilities) as a pyarrow string array (None stays null)."""
    values, p = options
    idx = rng.choice(len(values), size=n, p=np.asarray(p) / np.sum(p))
    return pa.array(values, pa.string()).take(pa.array(idx))


def ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes `counts`: the group of each element and its position in the group."""
    counts = np.asarray(counts, np.int64)
    group = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return group, np.arange(len(group)) - starts[group]


def times(seconds: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 epoch seconds -> timestamp[s] array, null where not valid."""
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(seconds, np.int64).view("datetime64[s]"), TS, mask=mask)


def ints(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 array, null where not valid."""
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(values, np.int64), pa.int64(), mask=mask)


def floats(values: np.ndarray) -> pa.Array:
    """float64 array, NaN written as null."""
    values = np.asarray(values, np.float64)
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def _num_text(values: np.ndarray) -> pa.Array:
    """Numbers as MIMIC writes them in `value`: shortest form, no trailing '.0'."""
    return pa.array(np.asarray(values, np.float64)).cast(pa.string())


NUM_TEXT_TENTHS = 40_000  # "0", "0.1", ..., "3999.9": the numbers charted, looked up not printed
_TENTHS = _num_text(np.arange(NUM_TEXT_TENTHS) / 10)


def coded(codes: np.ndarray, words: list, valid: np.ndarray | None = None) -> pa.Array:
    """Dictionary-encoded strings words[codes]; null where words[code] is None or not valid."""
    codes = np.asarray(codes, np.int32)
    mask = np.array([w is None for w in words])[codes]
    if valid is not None:
        mask |= ~np.asarray(valid, bool)
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=mask),
                                          pa.array([w or "" for w in words], pa.string()))


def value_text(valuenum: np.ndarray, text: np.ndarray, vocab: list) -> pa.Array:
    """The `value` column: vocab[text] where text >= 0, else the number as text.

    Dictionary-encoded: numbers in tenths from 0 to 3999.9 are looked up, any other number is
    printed once per distinct value."""
    tenths = np.rint(valuenum * 10)
    ok = (text < 0) & (np.abs(valuenum * 10 - tenths) < 1e-6) & (tenths >= 0) & (
        tenths < NUM_TEXT_TENTHS)
    idx = np.where(text >= 0, text, len(vocab) + np.where(ok, tenths, 0)).astype(np.int64)
    other = (text < 0) & ~ok & ~np.isnan(valuenum)
    dictionary = pa.concat_arrays([pa.array(vocab, pa.string()), _TENTHS])
    if other.any():
        distinct, inverse = np.unique(valuenum[other], return_inverse=True)
        idx[other] = len(dictionary) + inverse
        dictionary = pa.concat_arrays([dictionary, _num_text(distinct)])
    return pa.DictionaryArray.from_arrays(
        pa.array(idx.astype(np.int32), mask=(text < 0) & np.isnan(valuenum)), dictionary)


def pick_dirty(rng, candidates: np.ndarray, rate: float, at_least: int) -> np.ndarray:
    """A random subset of `candidates` (indices): about `rate` of them, at least `at_least`."""
    k = min(len(candidates), max(at_least, rng.binomial(len(candidates), rate)))
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]
