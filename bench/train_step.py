"""Sequences/s and MFU of a full JEPA train step: forward, backward, AdamW step, EMA update.

    python -m bench train_step                       # every case and mode that applies here
    python -m bench train_step --quick               # CPU: small-8x20, a few steps
    python -m bench train_step --case small-64x256 --mode compile_bf16_ro --mode ours --json out.json
    python -m bench train_step --lengths stays --data OUT [--size micro] [--tokens 2048]

Cases (future masks, 25 features), named size-BxT after what runs: small-8x20 (15 context + 5
target hours; the CPU default), small-256x20 (15 + 5), small-64x256 (192 + 64), base-64x256
(192 + 64); --size and --batch rename a case's rows accordingly. Each measured row is appended to
bench/results.csv as it finishes (see bench/results.py; --quick runs only with --results). Modes:
- eager_fp32, eager_bf16 (autocast): the model as is;
- compile_bf16: torch.compile of the model's forward (loss included), default mode;
- compile_bf16_ro: the same with mode="reduce-overhead" (CUDA graphs): the rival to beat;
- ours (CUDA only): bf16 autocast + torch.compile + fused capturable AdamW + attention backend
  "triton" + the ehrjepa.kernels EMA, with the whole step (forward, backward, AdamW, EMA)
  captured in one CUDA graph; falls back to no graph, and says so, if the capture fails.
On CUDA every mode uses fused AdamW (as the rival's anchor run did); on CPU the foreach AdamW. The
EMA is one foreach lerp in every mode but ours (as in the anchors' run).

`--lengths stays` (issue 12, whole-stay pretraining): token-budget batches (ehrjepa.data.batches,
--tokens per batch) of lengths drawn from the processed stays' real distribution (the train
split's n_hours, capped at --hours, at least --min-length), future masks (75 % context, the next
24 hours targets), for attention sdpa (padded to each batch's longest sample, key mask) and
triton (the gather kernel, which skips padding; on CPU its torch reference), beside the
fixed-window case (29-hour windows, 24 + 5, as many per batch as the same token budget holds).
Reported: real tokens/s (the samples' own hours), padded tokens/s (batch x longest) and the
padded fraction. CPU: eager fp32; CUDA: bf16 autocast + torch.compile(dynamic=True).

MFU counts matmul FLOPs of the linear layers only (attention score/value products left out, as in
../shared/anchors): 2 x weights x tokens for the target encoder's forward over all T hours, and
6 x weights x tokens for the encoder (context tokens) and predictor (context + target tokens).
It is given against --peak-tflops (default 989, the H100/H200 dense bf16 peak; on CPU the
measured bf16 matmul) and against a matmul measured in the same run, in the mode's dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from bench import results
from bench.profile import profile

CASES = {  # name (size-BxT, what runs) -> (size, batch, hours, context hours, target hours)
    "small-8x20": ("small", 8, 20, 15, 5),  # the CPU case
    "small-256x20": ("small", 256, 20, 15, 5),
    "small-64x256": ("small", 64, 256, 192, 64),
    "base-64x256": ("base", 64, 256, 192, 64),
}
MODES = ["eager_fp32", "eager_bf16", "compile_bf16", "compile_bf16_ro", "ours"]
CUDA_ONLY = {"compile_bf16_ro", "ours"}
RIVAL = "compile_bf16_ro"
N_FEATURES = 25


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--case", action="append", choices=list(CASES),
                        help="repeatable; default: all but small-8x20 on CUDA, small-8x20 on CPU")
    parser.add_argument("--mode", action="append", choices=MODES,
                        help="repeatable; default: all that apply (CPU: eager_fp32, eager_bf16)")
    parser.add_argument("--batch", type=int, help="override the batch size of every case")
    parser.add_argument("--size", choices=["micro", "tiny", "small", "base", "large"],
                        help="override the model size of every case (micro: a quick smoke run)")
    parser.add_argument("--quick", action="store_true",
                        help="few steps")
    parser.add_argument("--steps", type=int,
                        help="timed steps (default: 30 on CUDA, 10 on CPU; CPU reports the median step)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on CUDA, 3 on CPU)")
    parser.add_argument("--peak-tflops", type=float,
                        help="MFU denominator (default 989 on CUDA, measured bf16 matmul on CPU)")
    parser.add_argument("--threads", type=int, help="CPU: torch threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile", metavar="DIR",
                        help="also write a torch.profiler table of 3 steps per case and mode to "
                             "DIR/profile_train_step_CASE_MODE.txt")
    parser.add_argument("--lengths", choices=["fixed", "stays"], default="fixed",
                        help="stays: token-budget batches of the processed stays' lengths (needs "
                             "--data; default: fixed, the cases above)")
    parser.add_argument("--data", help="--lengths stays: processed data folder (ehrjepa preprocess OUT)")
    parser.add_argument("--hours", type=int, default=168, help="--lengths stays: longest crop (default 168)")
    parser.add_argument("--min-length", type=int, default=12,
                        help="--lengths stays: shortest stay taken (default 12)")
    parser.add_argument("--tokens", type=int,
                        help="--lengths stays: padded tokens per batch (default 2048 on CPU, 16384 on CUDA)")
    results.add_option(parser)


def make_batch(B, T, C, P, device):
    import torch

    from ehrjepa.masks import MaskConfig, sample_masks

    g = torch.Generator().manual_seed(0)
    observed = (torch.rand(B, T, N_FEATURES, generator=g) < 0.3).float()
    batch = {"values": torch.randn(B, T, N_FEATURES, generator=g), "observed": observed,
             "delta": torch.rand(B, T, N_FEATURES, generator=g) * 48 * (1 - observed)}
    batch.update(sample_masks(MaskConfig(kind="future", context_hours=C, target_hours=P), T, B))
    return {k: v.to(device) for k, v in batch.items()}


def matmul_flops(model, B, T, C, P) -> float:
    """Linear-layer matmul FLOPs of one train step (see the module docstring)."""
    def weights(module):
        return sum(m.weight.numel() for m in module.modules() if type(m).__name__ == "Linear")

    enc = weights(model.encoder)
    pred = model.predictor
    pred_in, pred_out = pred.embed.weight.numel(), pred.out.weight.numel()
    pred_body = weights(pred.transformer)
    forward_enc = 2 * enc * B * T  # target encoder, no backward
    train = 6 * (enc * B * C + pred_in * B * C + pred_body * B * (C + P) + pred_out * B * P)
    return float(forward_enc + train)


def measured_matmul_tflops(device, dtype) -> float:
    import torch

    n, reps = (8192, 20) if device.type == "cuda" else (1024, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):  # the best repetition: a peak, robust to a busy machine
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_step(mode, model, batch, device):
    """Returns (step function, note). The step runs forward, backward, AdamW and the EMA."""
    import contextlib

    import torch

    from ehrjepa.models import param_groups

    cuda = device.type == "cuda"
    bf16 = mode != "eager_fp32"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    forward = model
    if mode == "compile_bf16" or mode == "ours":
        forward = torch.compile(model)
    elif mode == "compile_bf16_ro":
        forward = torch.compile(model, mode="reduce-overhead")
    groups = param_groups(model, 0.05)
    if mode == "ours":
        lr = torch.tensor(1e-4, device=device)
        opt = torch.optim.AdamW(groups, lr=lr, fused=True, capturable=True)
        momentum = torch.tensor(0.996, device=device)
        ema = model.momentum_update  # on CUDA: the ehrjepa.kernels EMA
    else:
        opt = torch.optim.AdamW(groups, lr=1e-4, fused=cuda)
        momentum = 0.996
        # the rivals' EMA is one foreach lerp, as in the anchors' run (not our kernel, which the
        # model would pick on CUDA)
        targets, context = list(model.target_encoder.parameters()), list(model.encoder.parameters())

        def ema(m):
            with torch.no_grad():
                torch._foreach_lerp_(targets, context, 1.0 - m)

    def step():
        with autocast():
            loss, _ = forward(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema(momentum)
        return loss

    if mode != "ours":
        return step, ""
    # Warm up on a side stream (compiles, allocates optimizer state), then capture one step.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            with autocast():
                loss, _ = forward(batch)
            loss.backward()
            opt.step()
            ema(momentum)
        return graph.replay, "whole step in one CUDA graph"
    except Exception as e:  # noqa: BLE001 - report and measure without the graph
        torch.cuda.synchronize()
        return step, f"CUDA graph capture failed, no graph: {type(e).__name__}: {str(e)[:120]}"


def run_one(case, mode, device, args) -> dict:
    import torch

    from ehrjepa.models import JEPA, ModelConfig

    size, B, T, C, P = CASES[case]
    size, B = args.size or size, args.batch or B
    # the row is named by what ran: --size and --batch rename it
    row = {"case": f"{size}-{B}x{T}", "size": size, "batch": B, "hours": T, "context": C, "target": P, "mode": mode}
    torch._dynamo.reset()
    torch.manual_seed(0)
    try:
        cfg = ModelConfig(size=size, attention="triton" if mode == "ours" else "sdpa")
        model = JEPA(cfg, N_FEATURES, T).to(device)
        batch = make_batch(B, T, C, P, device)
        t0 = time.perf_counter()
        step, note = build_step(mode, model, batch, device)
        for _ in range(args.warmup):
            step()
        sync(device)
        row["warmup_s"] = round(time.perf_counter() - t0, 2)
        if device.type == "cuda":  # steps queue up asynchronously: time them together
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            ms = (time.perf_counter() - t0) / args.steps * 1e3
        else:  # a shared CPU is noisy: the median step
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            ms = sorted(times)[len(times) // 2] * 1e3
            row["ms_min"] = round(min(times) * 1e3, 3)
    except Exception as e:  # noqa: BLE001 - one failing mode must not hide the others
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return row
    if args.profile:  # where a step's time goes (a captured step shows its graph's kernels)
        path = os.path.join(args.profile, f"profile_train_step_{row['case']}_{mode}.txt")
        try:
            profile({mode: step}, [mode], path, calls=3)
            row["profile"] = path
        except Exception as e:  # noqa: BLE001 - the timing above stands without it
            row["profile"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
    flops = matmul_flops(model, B, T, C, P)
    row.update(ms=round(ms, 3), seq_s=round(B / ms * 1e3, 1), matmul_gflop=round(flops / 1e9, 3),
               tflops=flops / ms / 1e9, note=note)
    return row


def stay_lengths(data: str, hours: int, min_length: int):
    """min(n_hours, hours) of every train stay with n_hours >= min_length."""
    import numpy as np

    from ehrjepa.data import open_processed

    processed = open_processed(data)
    n = processed.stays.column("n_hours").to_numpy()[processed.split_indices("train")]
    n = np.minimum(n[n >= min_length], hours).astype(np.int64)
    if len(n) == 0:
        raise SystemExit(f"train_step: {data}: no train stay has {min_length} hours or more")
    return n


def ragged_batch(lengths, hours: int, device, C=None, P=None):
    """Random inputs of the given per-sample lengths, padded to the longest; future masks (75 %
    context and the next 24 hours, or C + P hours on fixed windows)."""
    import numpy as np
    import torch

    from ehrjepa.masks import MaskConfig, sample_masks

    lengths = np.asarray(lengths, dtype=np.int64)
    B, T = len(lengths), int(lengths.max())
    g = torch.Generator().manual_seed(int(lengths.sum()))
    valid = (torch.arange(T)[None, :] < torch.from_numpy(lengths)[:, None])[..., None].float()
    observed = (torch.rand(B, T, N_FEATURES, generator=g) < 0.3).float() * valid
    batch = {"values": torch.randn(B, T, N_FEATURES, generator=g) * valid, "observed": observed,
             "delta": torch.rand(B, T, N_FEATURES, generator=g) * 48 * (1 - observed),
             "lengths": torch.from_numpy(lengths)}
    cfg = (MaskConfig(kind="future", context_fraction=0.75, target_hours=24) if C is None
           else MaskConfig(kind="future", context_hours=C, target_hours=P))
    batch.update(sample_masks(cfg, hours, B, lengths=lengths))
    return {k: v.to(device) for k, v in batch.items()}


def run_stays(case, attention, batches, device, args) -> dict:
    """Time full steps over `batches` (lists of sample lengths) with one attention backend."""
    import contextlib

    import torch

    from ehrjepa.models import JEPA, ModelConfig, param_groups

    cuda = device.type == "cuda"
    size = args.size or ("small" if cuda else "micro")
    real = sum(int(sum(b)) for b in batches[args.warmup:])
    padded = sum(len(b) * int(max(b)) for b in batches[args.warmup:])
    row = {"case": case, "size": size, "attention": attention, "batches": len(batches) - args.warmup,
           "mean_batch": round(sum(len(b) for b in batches) / len(batches), 1),
           "padded_fraction": round(1 - real / padded, 4)}
    torch._dynamo.reset()
    torch.manual_seed(0)
    try:
        model = JEPA(ModelConfig(size=size, attention=attention), N_FEATURES, args.hours).to(device)
        forward = torch.compile(model, dynamic=True) if cuda else model
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=cuda)
        hours = max(args.hours, max(max(b) for b in batches))
        data = [ragged_batch(b, hours, device, *((24, 5) if case == "windows-29" else ())) for b in batches]

        def step(batch):
            with autocast():
                loss, _ = forward(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.momentum_update(0.996)

        for batch in data[: args.warmup]:
            step(batch)
        sync(device)
        t0 = time.perf_counter()
        for batch in data[args.warmup:]:
            step(batch)
        sync(device)
        elapsed = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - one failing case must not hide the others
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return row
    row.update(s=round(elapsed, 3), real_tokens_s=round(real / elapsed, 1),
               padded_tokens_s=round(padded / elapsed, 1))
    return row


def main_stays(args, device, name) -> int:
    """--lengths stays: token-budget batches of real stay lengths vs fixed windows."""
    import numpy as np
    import torch

    from ehrjepa.data.batches import TokenBudgetBatchSampler

    if not args.data:
        print("train_step: --lengths stays needs --data OUT (processed data)", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    tokens = args.tokens or (16384 if cuda else 2048)
    lengths = stay_lengths(args.data, args.hours, args.min_length)
    sampler = TokenBudgetBatchSampler(lengths, tokens, seed=0)
    need = args.warmup + args.steps
    stays = []
    for epoch in range(need):  # as many epochs as it takes (small data sets)
        stays += [lengths[b].tolist() for b in sampler.epoch_batches(epoch)]
        if len(stays) >= need:
            break
    stays = stays[:need]
    windows = [[29] * (tokens // 29)] * need
    print(f"# train step, --lengths stays, on {name}, torch {torch.__version__}: {len(lengths)} "
          f"train stays of {args.data} (median {int(np.median(lengths))} h, capped at {args.hours}), "
          f"{tokens} tokens per batch", flush=True)
    record = results.destination(args.results, args.quick)
    rows = []
    for case, batches in (("stays", stays), ("windows-29", windows)):
        for attention in ("sdpa", "triton"):
            row = run_stays(case, attention, batches, device, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if record:
                out = {"benchmark": "train_step", "case": f"{row['size']}-{case}",
                       "tool": f"{attention}{'-packed' if attention == 'triton' else '-padded'}",
                       "shape": f"{tokens} tokens/batch, mean {row['mean_batch']} samples, up to "
                                f"{args.hours if case == 'stays' else 29} h"}
                if "error" in row:
                    out["status"] = f"failed: {row['error']}"
                else:
                    out.update(wall_s=row["s"], value=row["real_tokens_s"], unit="real tokens/s",
                               note=f"padded tokens/s {row['padded_tokens_s']}, padded fraction "
                                    f"{row['padded_fraction']}, {row['batches']} steps after "
                                    f"{args.warmup} warm-up; {name}")
                results.append_rows([out], record)
    print("\n| case | attention | samples/batch | padded fraction | real tokens/s | padded tokens/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | {r['attention']} | failed: {r['error'][:80]} | | | |")
            continue
        print(f"| {r['case']} | {r['attention']} | {r['mean_batch']} | {r['padded_fraction']:.3f} "
              f"| {r['real_tokens_s']:,.0f} | {r['padded_tokens_s']:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "tokens": tokens,
                       "results": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 1 if any("error" in r for r in rows) else 0


def result_row(row, args, machine, threads=None) -> dict:
    """The results.csv row of one (case, mode); `threads`: torch's CPU threads (None on CUDA)."""
    out = {"benchmark": "train_step", "case": row["case"], "tool": row["mode"],
           "shape": f"B={row['batch']} T={row['hours']} ({row['context']} + {row['target']})"
                    + (f", {threads} thread{'s' if threads > 1 else ''}" if threads else "")}
    if "error" in row:
        return {**out, "status": f"failed: {row['error']}"}
    how = "median step" if "ms_min" in row else "mean step"
    note = f"{how} of {args.steps} after {args.warmup} warm-up; {machine}"
    return {**out, "wall_s": row["ms"] / 1e3, "value": row["seq_s"], "unit": "seq/s",
            "note": note + (f"; {row['note']}" if row.get("note") else "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench train_step", description=__doc__.splitlines()[0])
    configure(parser)
    args = parser.parse_args(argv)

    import torch

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("train_step: --device cuda but no CUDA device is available", file=sys.stderr)
            return 2
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.case or ([c for c in CASES if c != "small-8x20"] if cuda else ["small-8x20"])
    modes = args.mode or [m for m in MODES if cuda or m not in CUDA_ONLY and m != "compile_bf16"]
    skipped = [m for m in modes if m in CUDA_ONLY and not cuda]
    modes = [m for m in modes if m not in skipped]
    if skipped:
        print(f"train_step: {', '.join(skipped)} need CUDA; skipped on CPU", file=sys.stderr)
    if args.steps is None:
        args.steps = (10 if args.quick else 30) if cuda else (5 if args.quick else 10)
    if args.warmup is None:
        args.warmup = (3 if args.quick else 5) if cuda else (2 if args.quick else 3)

    if cuda:
        name = torch.cuda.get_device_name()
    else:  # a shared CPU: say how busy it was
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        name = (f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                f"load average {load:.1f} at start)")
    if args.lengths == "stays":
        return main_stays(args, device, name)

    def ceilings():
        return {"bf16": measured_matmul_tflops(device, torch.bfloat16),
                "fp32": measured_matmul_tflops(device, torch.float32)}

    measured = ceilings()
    print(f"# train step on {name}, torch {torch.__version__}", flush=True)
    record = results.destination(args.results, args.quick)
    rows = []
    for case in cases:
        for mode in modes:
            row = run_one(case, mode, device, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if record:  # row by row: a killed run keeps what it measured
                threads = None if cuda else torch.get_num_threads()
                results.append_rows([result_row(row, args, name, threads)], record)
    # The matmul ceilings again after the steps (a shared machine's load changes): keep the best.
    measured = {k: max(v, w) for (k, v), w in zip(measured.items(), ceilings().values())}
    peak = args.peak_tflops or (989.0 if cuda else measured["bf16"])
    print(f"# measured matmul TFLOP/s (best of before and after): bf16 {measured['bf16']:.3f}, "
          f"fp32 {measured['fp32']:.3f}; MFU against {peak:.3f} TFLOP/s")
    for row in rows:
        if "ms" in row:
            mm = measured["fp32" if row["mode"] == "eager_fp32" else "bf16"]
            row["mfu_pct"] = round(100 * row["tflops"] / peak, 2)
            row["mfu_measured_pct"] = round(100 * row["tflops"] / mm, 2)
            row["tflops"] = round(row["tflops"], 4)
    for row in rows:  # speed-up against the rival measured in this run
        rival = next((r for r in rows if r["case"] == row["case"] and r["mode"] == RIVAL and "ms" in r), None)
        if rival and "ms" in row:
            row["vs_rival"] = round(row["seq_s"] / rival["seq_s"], 2)

    if not cuda:
        print("\nCPU: ms/step is the median step, the best one in brackets.")
    print("\n| case | B x T (context + target) | mode | ms/step | seq/s | MFU % | MFU % of measured matmul "
          "| vs reduce-overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        shape = f"{r['batch']} x {r['hours']} ({r['context']} + {r['target']})"
        if "error" in r:
            print(f"| {r['case']} | {shape} | {r['mode']} | failed: {r['error'][:80]} | | | | |")
            continue
        ms = f"{r['ms']:.2f}" + (f" (best {r['ms_min']:.2f})" if "ms_min" in r else "")
        print(f"| {r['case']} | {shape} | {r['mode']} | {ms} | {r['seq_s']:,.1f} | {r['mfu_pct']:.1f} "
              f"| {r['mfu_measured_pct']:.1f} | {r.get('vs_rival', '')} |")
        if r.get("note"):
            print(f"<!-- {r['case']} {r['mode']}: {r['note']} -->")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "peak_tflops": peak,
                       "measured_matmul_tflops": measured, "steps": args.steps, "warmup": args.warmup,
                       "results": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
