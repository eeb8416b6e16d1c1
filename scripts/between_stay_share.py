#!/usr/bin/env python
"""How much of an encoder's hour-embedding variance lies between stays rather than within them.

    python scripts/between_stay_share.py --data OUT RUN [RUN ...] [--split val] [--hours 48]
        [--checkpoint best.pt] [--checkpoint last.pt]

For every stay of the split (its hours [0, HOURS), all hours as context, the target encoder, as
the frozen probe embeds them) this takes the hour embeddings h[stay, hour, :] and prints

    share = sum_d Var_stays(mean_hours h[:, :, d]) / sum_d Var_all(h[:, :, d])

for each checkpoint of each RUN and for the untrained copy of its model (built from the run's
config with torch.manual_seed(0), as `probe`'s random_init). A stay-level probe (mortality)
reads the mean over hours, so the between-stay part is what it can use; the rest is hour-to-hour
variation inside a stay. Issue 23 used it to see what the VICReg-style terms spread.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def share(model, batch) -> float:
    import numpy as np
    import torch

    with torch.inference_mode():
        h = model.eval().embed(batch["values"], batch["observed"], batch["delta"]).double().numpy()
    total = h.reshape(-1, h.shape[-1]).var(0).sum()
    return float(h.mean(1).var(0).sum() / total) if total > 0 else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders of `ehrjepa train`")
    p.add_argument("--data", required=True, type=Path, help="the processed folder the runs trained on")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--hours", type=int, default=48)
    p.add_argument("--checkpoint", action="append", default=None,
                   help="checkpoint file names under RUN/checkpoints (repeatable; default best.pt and last.pt)")
    args = p.parse_args(argv)

    import torch

    from ehrjepa.data import open_processed
    from ehrjepa.data.windows import WindowDataset
    from ehrjepa.models import load_model
    from ehrjepa.models.jepa import build_model

    torch.set_num_threads(1)
    data = open_processed(args.data)
    stays = WindowDataset.for_hours(data, args.split, args.hours)
    if len(stays) == 0:
        print(f"{args.data}: no {args.split} stay has {args.hours} hours", file=sys.stderr)
        return 2
    items = [stays[i] for i in range(len(stays))]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("values", "observed", "delta")}
    print(f"{len(items)} {args.split} stays of {args.data}, hours [0, {args.hours})")
    for run in args.runs:
        for name in args.checkpoint or ["best.pt", "last.pt"]:
            path = run / "checkpoints" / name
            model, cfg, ckpt = load_model(path)
            torch.manual_seed(0)
            untrained = build_model(cfg, model.n_features)
            print(f"{path} (step {ckpt.get('step')}): between-stay share {share(model, batch):.3f}, "
                  f"untrained copy {share(untrained, batch):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
