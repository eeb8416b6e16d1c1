"""`ehrjepa splits`: the split files of the literature's protocols, for `preprocess --splits`.

PhysioNet/CinC 2012 (in-hospital death):
- `challenge`: the challenge's own: train and validation from set-a (validation a seeded,
  death-stratified 10 % of it), test set-b.
- `pooled`: the protocol of most later papers (SeFT, Raindrop, ViTST, ...): the stays of every
  set given pooled and split 80/10/10 at random, stratified by in-hospital death; a paper
  reports the mean and standard deviation over 5 such splits (seeds 0-4 here). The papers pool
  the 11,988 stays of sets a, b and c that have outcomes; set-c is not public with outcomes, so
  ours pools a and b (8,000 stays): say so beside every such table.
PhysioNet/CinC 2019 (sepsis):
- `hospital-halves`: the mechanics of training on one hospital and testing on another: the
  stays of the set(s) given split into two halves by a seeded hash of the stay id; the first
  half is train and validation (a tenth of it), the second test. With both of the challenge's
  training sets, `hospital` puts set A in train/val and set B in test.

The file has columns `stay_id,split`; stays whose labels are unknown are kept (in train) so
that every stay of the processed data is listed.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

PROTOCOLS = ("challenge", "pooled", "hospital-halves", "hospital")


def _stratified(ids: np.ndarray, label: np.ndarray, fractions, rng) -> np.ndarray:
    """Split codes (0 train, 1 val, 2 test) with each label's stays dealt by `fractions`."""
    codes = np.zeros(len(ids), np.int8)
    for value in np.unique(label):
        idx = np.flatnonzero(label == value)
        idx = idx[rng.permutation(len(idx))]
        cut = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for code, part in enumerate(np.split(idx, cut)):
            codes[part] = code
    return codes


def physionet2012_splits(root: Path, protocol: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(stay_id, split code) for the stays of Outcomes-*.txt under `root` (module docstring)."""
    from .physionet2012 import read_outcomes

    files = sorted(root.glob("Outcomes-*.txt"))
    if not files:
        raise FileNotFoundError(f"{root}: no Outcomes-*.txt (the 2012 challenge's outcomes)")
    sets = {f.stem.split("-", 1)[1]: read_outcomes(f) for f in files}
    rng = np.random.default_rng(seed)
    if protocol == "challenge":
        if "a" not in sets or "b" not in sets:
            raise ValueError(f"{root}: the challenge protocol needs Outcomes-a.txt and "
                             "Outcomes-b.txt")
        a, b = sets["a"], sets["b"]
        code_a = _stratified(a["RecordID"], a["In-hospital_death"], (0.9, 0.1), rng)
        return (np.concatenate([a["RecordID"], b["RecordID"]]),
                np.concatenate([code_a, np.full(len(b["RecordID"]), 2, np.int8)]))
    if protocol == "pooled":
        ids = np.concatenate([o["RecordID"] for o in sets.values()])
        death = np.concatenate([o["In-hospital_death"] for o in sets.values()])
        return ids, _stratified(ids, death, (0.8, 0.1, 0.1), rng)
    raise ValueError(f"protocol {protocol!r} is not one of the 2012 challenge's: challenge, pooled")


def physionet2019_splits(paths: list[Path], protocol: str, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(stay_id, split code) for the stays of the 2019 challenge's set(s)."""
    from .physionet2019 import read_group

    def stay_ids(path: Path) -> np.ndarray:
        return read_group(Path(os.path.abspath(path))).stay

    if protocol == "hospital":
        if len(paths) != 2:
            raise ValueError("the hospital protocol needs two sets: the training hospital's "
                             "first (train/val), the test hospital's second")
        train, test = stay_ids(paths[0]), stay_ids(paths[1])
        rng = np.random.default_rng(seed)
        val = rng.random(len(train)) < 0.1
        return (np.concatenate([train, test]),
                np.concatenate([val.astype(np.int8), np.full(len(test), 2, np.int8)]))
    if protocol == "hospital-halves":
        ids = np.concatenate([stay_ids(p) for p in paths])
        rng = np.random.default_rng(seed)
        half = rng.permutation(len(ids)) < len(ids) // 2  # the "training hospital"
        val = rng.random(len(ids)) < 0.1
        return ids, np.where(half, val.astype(np.int8), 2).astype(np.int8)
    raise ValueError(f"protocol {protocol!r} is not one of the 2019 challenge's: "
                     "hospital-halves, hospital")


def write_splits(path: Path, ids: np.ndarray, codes: np.ndarray) -> None:
    """A CSV of stay_id,split, written whole (temp file, then rename)."""
    from .processed import SPLITS

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    names = np.array(SPLITS)[codes]
    tmp.write_text("stay_id,split\n" + "".join(f"{i},{s}\n" for i, s in zip(ids.tolist(), names)))
    os.replace(tmp, path)


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--physionet2012", metavar="DIR",
                        help="the folder holding the 2012 challenge's Outcomes-*.txt")
    source.add_argument("--physionet2019", metavar="PATH", nargs="+",
                        help="the 2019 challenge's set(s): folders or archives of .psv files")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS,
                        help="challenge or pooled (2012); hospital-halves or hospital (2019)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random parts (default 0; the pooled protocol's 5 "
                             "splits are seeds 0-4)")
    parser.add_argument("--out", required=True, help="the CSV to write (stay_id,split)")


def main(args: argparse.Namespace) -> int:
    from .processed import SPLITS

    try:
        if args.physionet2012 is not None:
            ids, codes = physionet2012_splits(Path(args.physionet2012), args.protocol, args.seed)
        else:
            ids, codes = physionet2019_splits([Path(p) for p in args.physionet2019],
                                              args.protocol, args.seed)
        write_splits(Path(args.out), ids, codes)
    except (OSError, ValueError) as e:
        print(f"ehrjepa splits: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s} {int((codes == k).sum())}" for k, s in enumerate(SPLITS))
    print(f"{args.out}: {len(ids)} stays, {args.protocol} protocol, seed {args.seed}: {counts}")
    return 0
