"""Kernel benchmark: masked gather-attention and the fused EMA against what users would pick instead.

    python -m bench kernels [--quick] [--only SECTION] [--attn BxT] [--json PATH] [--png PATH]
                            [--results CSV]

Everything is measured in the same run, on the same device:
- ceilings: device copy bandwidth and bf16 matmul rate;
- attention, forward + backward including the gather and the QKV projection, H=6, D=64, bf16,
  kept counts drawn from 60-85 % of T per sample: gather + SDPA with a key mask; gather +
  FlexAttention (compiled, block mask from the lengths); truncation of every sample to the
  smallest count + SDPA (I-JEPA's way, drops context); ours on the gathered (left-packed) tokens;
  ours with the gather fused (projection of all T tokens, kernel reads rows through the index).
  ms, and TFLOP/s counted on valid tokens (4 L^2 D per head forward, x3.5 for forward+backward);
- EMA of fp32 target parameters with ViT-like shapes (21.3 M: 384 wide x 12 deep; 302 M: 1024 x
  24): per-parameter loop (I-JEPA), foreach mul+add, foreach lerp, one lerp on a flat buffer, ours
  (`ema_update_`, keyed by every tensor per call) and ours_plan (an `EmaPlan` built once, as the
  trainer keeps it). us and GB/s at 12 bytes per parameter, and the host Python cost per call
  with launches replaced by no-ops (`ehrjepa.kernels.ema.host_cost_us`).
Each variant gets a status: "ok"; "interpreter" (on CPU our kernels run in Triton's interpreter,
TRITON_INTERPRET=1, which executes them as NumPy: it proves they run, its time is no speed);
"unavailable: REASON" (e.g. Triton not installed, no FlexAttention backward on CPU: the other
variants still run); or "failed: ERROR". With --quick (or without CUDA) the shapes are tiny, so
every path runs in well under a minute on a CPU. Rows go to bench/results.csv (see
bench/results.py; a --quick run records only with --results).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

from bench import results
from bench.profile import profile

ATTN_CASES = [(512, 20), (128, 256), (32, 1024), (8, 4096)]
ATTN_CASES_QUICK = [(2, 20), (1, 40)]
EMA_MODELS = [("21.3M (384x12)", 384, 12), ("302M (1024x24)", 1024, 24)]
EMA_MODELS_QUICK = [("tiny (32x1)", 32, 1)]
ATTN_COLUMNS = ["gather_sdpa_mask", "gather_flex", "truncate_sdpa", "ours", "ours_fused_gather"]
EMA_COLUMNS = ["loop", "foreach_mul_add", "foreach_lerp", "flat_lerp", "ours", "ours_plan"]
EMA_OURS = {"ours", "ours_plan"}
OURS = {"ours", "ours_fused_gather"}
SECTIONS = ("ceilings", "attention", "ema")
GRAPH_CALLS = 10  # calls per captured CUDA graph in the device-time columns
INTERPRETER_NOTE = ("interpreter: Triton's CPU interpreter runs the kernel as NumPy; the time "
                    "shows that it runs, not how fast it is")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable; default: all)")
    parser.add_argument("--attn", action="append", metavar="BxT", type=_shape,
                        help="attention B x T to run, e.g. 32x1024 (repeatable; default: "
                             + ", ".join(f"{b}x{t}" for b, t in ATTN_CASES) + "; --quick: tiny ones)")
    parser.add_argument("--json", type=str, default=None, help="write results as JSON here")
    parser.add_argument("--png", type=str, default=None, help="write a plot here")
    parser.add_argument("--rep", type=int, default=None, help="timed repetitions per variant")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="CUDA: also write a torch.profiler table per case to "
                             "DIR/profile_CASE.txt (ours and its closest rivals)")
    results.add_option(parser)


def _shape(text: str) -> tuple[int, int]:
    try:
        B, T = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxT such as 32x1024, got {text!r}") from None
    return B, T


def triton_status(device) -> tuple[str, str]:
    """(status our kernels get on this device, Triton's version). On CPU, TRITON_INTERPRET must be
    set before this first import of Triton."""
    try:
        import triton
    except ImportError:
        return "unavailable: triton is not installed", "absent"
    return ("ok" if device == "cuda" else "interpreter"), triton.__version__


def bench(fn, device, warmup=3, rep=20):
    """Median milliseconds of fn() (CUDA events on GPU, wall clock on CPU)."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(rep):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(rep):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def ceilings(device, quick, rep):
    import torch
    n = (1 << 28) if device == "cuda" and not quick else (1 << 20)
    a = torch.randn(n, device=device)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), device, rep=rep)
    m = 8192 if device == "cuda" and not quick else 256
    x = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    y = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    ms2 = bench(lambda: x @ y, device, rep=rep)
    return {"copy_GBps": 2 * n * 4 / ms / 1e6, "bf16_matmul_TFLOPs": 2 * m ** 3 / ms2 / 1e9}


def host_ms(fn, rep=20):
    """Median host milliseconds to issue one fn() on an idle device (synchronised before, not
    after): the Python and launch cost a call pays before the device can start on it."""
    import torch
    times = []
    for _ in range(rep):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    times.sort()
    return times[len(times) // 2]


def graph_ms(fn, rep=20, calls=GRAPH_CALLS):
    """Median device milliseconds of one fn() inside a CUDA graph that captures `calls` of them
    (the graph's one host launch is spread over them): what the call costs inside a captured
    train step, with no host time in it."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture (allocator, autotuning, compiles)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    try:
        return bench(graph.replay, "cuda", warmup=2, rep=rep) / calls
    finally:
        del graph
        torch.cuda.empty_cache()


def _failed(e):
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def time_variants(row, variants, status, device, rep, unit, scale, rate):
    """Time every runnable variant into row[NAME + unit] (ms x scale) and row[NAME + "_" + rate's
    name] (only for status "ok"); a variant that raises is marked failed, the others go on.
    On CUDA also, per variant that ran: the host time to issue one call (row[NAME + "_host" +
    unit]) and the device time of one call inside a CUDA graph (row[NAME + "_graph" + unit], its
    rate, and row["graph_status"]): together they say how much of a call is host overhead."""
    rate_name, rate_of = rate
    graph_status = {}
    for name, fn in variants.items():
        try:
            ms = bench(fn, device, warmup=1 if device == "cpu" else 3, rep=rep)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at one size
            status[name] = _failed(e)
            continue
        row[name + unit] = ms * scale
        if status[name] == "ok":
            row[name + "_" + rate_name] = rate_of(ms)
        if device != "cuda":
            continue
        row[name + "_host" + unit] = host_ms(fn, rep) * scale
        try:
            ms = graph_ms(fn, rep)
        except Exception as e:  # noqa: BLE001 - e.g. a variant that syncs cannot be captured
            graph_status[name] = _failed(e)
            continue
        graph_status[name] = status[name]
        row[name + "_graph" + unit] = ms * scale
        row[name + "_graph_" + rate_name] = rate_of(ms)
    row["status"] = status
    if graph_status:
        row["graph_status"] = graph_status


def attention_case(B, T, device, dtype, rep, ours_status="ok", H=6, D=64, seed=0,
                   profile_dir=None):
    """One B x T row of the attention table: {variant: ms}, statuses, TFLOP/s and a check."""
    import torch
    import torch.nn.functional as F
    from ehrjepa.kernels import masked_gather_attention

    g = torch.Generator().manual_seed(seed)
    keep = torch.randint(int(0.6 * T), int(0.85 * T) + 1, (B,), generator=g)
    L = int(keep.max())
    index = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        index[b, :keep[b]] = torch.randperm(T, generator=g)[:keep[b]].sort().values
    index, keep_d = index.to(device), keep.to(device)
    valid = torch.arange(L, device=device)[None, :] < keep_d[:, None]
    x = torch.randn(B, T, H * D, device=device, dtype=dtype, requires_grad=True)
    wqkv = torch.randn(H * D, 3 * H * D, device=device, dtype=dtype) * 0.02
    flops = sum(4 * int(k) ** 2 * D * H for k in keep) * 3.5

    def proj(xc):  # unbind, as the model does: three selects would cost every variant ~0.2 ms
        return (xc @ wqkv).view(B, xc.shape[1], 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)

    def gathered():
        return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))

    def sdpa_mask():
        q, k, v = proj(gathered())
        return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])

    def truncate():
        n = int(keep.min())
        q, k, v = proj(torch.gather(x, 1, index[:, :n, None].expand(-1, -1, x.shape[-1])))
        return F.scaled_dot_product_attention(q, k, v)

    # check_index=False: the rivals validate nothing, so ours skips its host-synced range check
    # too, as the model's own layers do
    def ours():  # the gathered tokens are left-packed: the identity path, as the model uses it
        q, k, v = proj(gathered())
        return masked_gather_attention(q, k, v, None, keep_d, backend="triton", check_index=False)

    def ours_fused():  # the kernel reads rows through the index (unique by construction)
        q, k, v = proj(x)
        return masked_gather_attention(q, k, v, index, keep_d, backend="triton",
                                       check_index=False, unique_index=True)

    row = {"B": B, "T": T, "H": H, "D": D, "max_keep": L, "min_keep": int(keep.min()),
           "dtype": str(dtype).replace("torch.", ""), "GFLOP": flops / 1e9}
    status = {name: "ok" for name in ATTN_COLUMNS}
    forward = {"gather_sdpa_mask": sdpa_mask, "truncate_sdpa": truncate}
    status.update(dict.fromkeys(OURS, ours_status))
    if not ours_status.startswith("unavailable"):
        forward.update(ours=ours, ours_fused_gather=ours_fused)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
        block_mask = create_block_mask(lambda b, h, qi, ki: ki < keep_d[b], B, None, L, L,
                                       device=device)

        def run_flex():
            q, k, v = proj(gathered())
            return flex(q, k, v, block_mask=block_mask)
        run_flex().float().sum().backward()  # compile (or fail) here, outside the timing
        forward["gather_flex"] = run_flex
    except Exception as e:  # noqa: BLE001 - e.g. no FlexAttention backward on CPU
        status["gather_flex"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

    if "ours" in forward:  # correctness: ours against SDPA with the key mask on the valid rows
        with torch.no_grad():
            want, got, got_fused = sdpa_mask(), ours(), ours_fused()
            rows = valid[:, None, :, None]
            row["max_abs_diff_vs_sdpa"] = float(((got - want).abs() * rows).max())
            row["max_abs_diff_fused_vs_sdpa"] = float(((got_fused - want).abs() * rows).max())

        def grad_of(fn):  # d/dx of the valid rows' sum (SDPA also writes padded query rows)
            x.grad = None
            (fn().float() * rows).sum().backward()
            g, x.grad = x.grad.float(), None
            return g
        g_ref = grad_of(sdpa_mask)
        row["max_rel_grad_diff_vs_sdpa"] = max(
            float((grad_of(f) - g_ref).abs().max() / g_ref.abs().max()) for f in (ours, ours_fused))

    def step(fn):
        def run():
            x.grad = None
            fn().float().sum().backward()
        return run
    variants = {name: step(forward[name]) for name in ATTN_COLUMNS if name in forward}
    time_variants(row, variants, status, device, rep, "_ms", 1.0,
                  ("TFLOPs", lambda ms: flops / ms / 1e9))
    _profile(row, variants, ("gather_sdpa_mask", "ours", "ours_fused_gather"), device,
             profile_dir, f"attention_{B}x{T}")
    return row


def _profile(row, variants, names, device, profile_dir, case):
    """Profile into profile_dir/profile_CASE.txt (CUDA only); a failure is noted in the row."""
    if not profile_dir or device != "cuda":
        return
    path = os.path.join(profile_dir, f"profile_{case}.txt")
    try:
        profile(variants, names, path)
        row["profile"] = path
    except Exception as e:  # noqa: BLE001 - the timings above stand without it
        row["profile"] = _failed(e)


def vit_shapes(dim, depth, mlp=4):
    shapes = []
    for _ in range(depth):
        shapes += [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,), (dim,), (dim,),
                   (mlp * dim, dim), (mlp * dim,), (dim, mlp * dim), (dim,)]
    return shapes


def ema_variants(shapes, device, m=0.996):
    """The EMA rivals and ours on fresh tensors of these shapes: (variants, targets, context, n)."""
    import torch
    from ehrjepa.kernels import ema_update_

    context = [torch.randn(s, device=device) for s in shapes]
    targets = [torch.randn(s, device=device) for s in shapes]
    n = sum(p.numel() for p in context)
    flat_c, flat_t = torch.randn(n, device=device), torch.randn(n, device=device)

    def loop():  # I-JEPA's way: one mul and one add per parameter
        with torch.no_grad():
            for c, t in zip(context, targets):
                t.mul_(m).add_((1.0 - m) * c.detach())

    variants = {
        "loop": loop,
        "foreach_mul_add": lambda: (torch._foreach_mul_(targets, m),
                                    torch._foreach_add_(targets, context, alpha=1 - m)),
        "foreach_lerp": lambda: torch._foreach_lerp_(targets, context, 1 - m),
        "flat_lerp": lambda: flat_t.lerp_(flat_c, 1 - m),
        "ours": lambda: ema_update_(targets, context, m, backend="triton"),
    }
    plan = []

    def ours_plan():  # the plan a trainer keeps: built on the first (warm-up) call, then reused
        if not plan:
            from ehrjepa.kernels.ema import EmaPlan
            plan.append(EmaPlan(targets, context))
        plan[0](m)
    variants["ours_plan"] = ours_plan
    return variants, targets, context, n


def ema_case(name, dim, depth, device, rep, ours_status="ok", profile_dir=None):
    import torch
    from ehrjepa.kernels import ema_update_

    m = 0.996
    variants, targets, context, n = ema_variants(vit_shapes(dim, depth), device, m)
    row = {"model": name, "params_M": n / 1e6}
    status = {key: "ok" for key in EMA_COLUMNS}
    status.update(dict.fromkeys(EMA_OURS, ours_status))
    if ours_status.startswith("unavailable"):
        for key in EMA_OURS:
            del variants[key]
    else:  # both of ours against foreach lerp, on copies of the targets
        from ehrjepa.kernels.ema import EmaPlan
        check = [t.clone() for t in targets]
        torch._foreach_lerp_(check, context, 1 - m)

        def ulp(update):
            ours_t = [t.clone() for t in targets]
            update(ours_t)
            return max(int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())
                       for a, b in zip(ours_t, check))
        row["max_ulp_vs_foreach_lerp"] = max(
            ulp(lambda ts: ema_update_(ts, context, m, backend="triton")),
            ulp(lambda ts: EmaPlan(ts, context, graph=False)(m)))
        del check
    try:  # the Python cost of a call, launches replaced by no-ops: the same on any device
        from ehrjepa.kernels.ema import host_cost_us
        cost = host_cost_us(vit_shapes(dim, depth), calls=2000)
        row["host_cost_us"] = {"ours": cost["keyed"], "ours_plan": cost["plan"]}
    except Exception as e:  # noqa: BLE001 - the timings below stand without it
        row["host_cost_error"] = _failed(e)
    time_variants(row, variants, status, device, rep, "_us", 1e3,
                  ("GBps", lambda ms: 12 * n / ms / 1e6))
    _profile(row, variants, ("flat_lerp", "foreach_lerp", "ours", "ours_plan"), device, profile_dir,
             f"ema_{dim}x{depth}")
    return row


# ------------------------------------------------------------------------------------------------
# output: markdown, results.csv rows, plot

def _cell(row, name, unit, rate, digits):
    """'0.590 (12.3)' when ok; the time marked as the interpreter's; else the status's first word."""
    status = row["status"][name]
    if status == "interpreter":
        return f"{row[name + unit]:,.1f} (interpreter)"
    if status != "ok":
        return status.split(":")[0]
    return f"{row[name + unit]:,.{digits}f} ({row[name + '_' + rate]:,.1f})"


def _table(rows, columns, label, unit, rate, digits, check):
    lines = [f"| {label} | " + " | ".join(columns) + f" | {check[1]} |",
             "|---" * (len(columns) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['_label']} | " + " | ".join(_cell(r, c, unit, rate, digits) for c in columns)
                     + f" | {check[2](r[check[0]]) if check[0] in r else 'n/a'} |")
    return _notes(rows, lines)


def _graph_table(rows, columns, label, unit, rate, digits):
    """Device time per call in a CUDA graph (rate), and in brackets the host time to issue one."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    shown = []
    for r in rows:
        if "graph_status" not in r:
            continue
        view = {"_label": r["_label"], "status": {c: r["graph_status"].get(c, r["status"][c])
                                                    for c in columns}}
        for c in columns:
            for key in (c + "_graph" + unit, c + "_graph_" + rate):
                if key in r:
                    view[key.replace("_graph", "")] = r[key]
        cells = []
        for c in columns:
            cell = _cell(view, c, unit, rate, digits)
            host = r.get(c + "_host" + unit)
            cells.append(cell if host is None else f"{cell}; host {host:,.{digits}f}")
        lines.append(f"| {r['_label']} | " + " | ".join(cells) + " |")
        shown.append(view)
    return _notes(shown, lines) if shown else []


def _notes(rows, lines):
    notes = {f"{name}: {s}" for r in rows for name, s in r["status"].items() if s not in ("ok", "interpreter")}
    if any("interpreter" in r["status"].values() for r in rows):
        notes.add(INTERPRETER_NOTE)
    return lines + [""] + sorted(notes) + [""]


def markdown(res):
    lines = [f"device: {res['device']}; torch {res['torch']}; triton {res['triton']}; "
             f"{res['date']}", ""]
    c = res.get("ceilings")
    if c:
        lines += [f"ceilings: copy {c['copy_GBps']:,.3g} GB/s, bf16 matmul "
                  f"{c['bf16_matmul_TFLOPs']:.3g} TFLOP/s", ""]
    if res.get("attention"):
        for r in res["attention"]:
            r["_label"] = f"{r['B']} x {r['T']}"
        lines += ["attention fwd+bwd, ms (TFLOP/s on valid tokens)", ""]
        lines += _table(res["attention"], ATTN_COLUMNS, "B x T", "_ms", "TFLOPs", 3,
                        ("max_abs_diff_vs_sdpa", "max abs diff vs SDPA", "{:.2e}".format))
        lines += [f"{r['_label']}: max relative difference of dx from SDPA's (ours, fused gather): "
                  f"{r['max_rel_grad_diff_vs_sdpa']:.2e}" for r in res["attention"]
                  if "max_rel_grad_diff_vs_sdpa" in r] + [""]
        graph = _graph_table(res["attention"], ATTN_COLUMNS, "B x T", "_ms", "TFLOPs", 3)
        if graph:
            lines += [f"the same, device ms per call inside a CUDA graph of {GRAPH_CALLS} calls "
                      "(TFLOP/s); host ms to issue one call", ""] + graph
    if res.get("ema"):
        for r in res["ema"]:
            r["_label"] = r["model"]
        lines += ["EMA of fp32 targets, us (GB/s at 12 bytes/param)", ""]
        lines += _table(res["ema"], EMA_COLUMNS, "model", "_us", "GBps", 1,
                        ("max_ulp_vs_foreach_lerp", "max ulp vs foreach lerp", str))
        for r in res["ema"]:
            cost = r.get("host_cost_us")
            if cost:
                lines.append(f"{r['model']}: host Python per call with launches replaced by no-ops: "
                             + ", ".join(f"{k} {v:.1f} us" for k, v in cost.items()))
        lines.append("")
        graph = _graph_table(res["ema"], EMA_COLUMNS, "model", "_us", "GBps", 1)
        if graph:
            lines += [f"the same, device us per call inside a CUDA graph of {GRAPH_CALLS} calls "
                      "(GB/s); host us to issue one call", ""] + graph
    for section, err in res.get("errors", {}).items():
        lines.append(f"{section} failed: {err}")
    for part in ("attention", "ema"):
        for r in res.get(part) or []:
            r.pop("_label", None)
    return "\n".join(lines)


def result_rows(section, row):
    """The results.csv rows of one case (or of the ceilings)."""
    if section == "ceilings":
        return [{"benchmark": "kernels", "case": "ceilings", "tool": "device copy",
                 "value": row["copy_GBps"], "unit": "GB/s"},
                {"benchmark": "kernels", "case": "ceilings", "tool": "bf16 matmul",
                 "value": row["bf16_matmul_TFLOPs"], "unit": "TFLOP/s"}]
    if section == "attention":
        case, columns, scale, rate, unit = f"attention {row['B']}x{row['T']}", ATTN_COLUMNS, 1e-3, \
            "TFLOPs", "TFLOP/s"
        shape = (f"B={row['B']} T={row['T']} H={row['H']} D={row['D']} {row['dtype']}, kept "
                 f"{row['min_keep']}-{row['max_keep']}")
        note = {"ours": row.get("max_abs_diff_vs_sdpa"), "ours_fused_gather": row.get("max_abs_diff_fused_vs_sdpa")}
        grad = row.get("max_rel_grad_diff_vs_sdpa")
        note = {k: f"max abs diff vs SDPA {v:.2e}"
                + ("" if grad is None else f"; max relative dx diff (ours, fused) {grad:.2e}")
                for k, v in note.items() if v is not None}
        key = "_ms"
    else:
        case, columns, scale, rate, unit = f"ema {row['model']}", EMA_COLUMNS, 1e-6, "GBps", "GB/s"
        shape = f"{row['params_M']:.2f}M fp32 params"
        ulp = row.get("max_ulp_vs_foreach_lerp")
        note = {"ours": f"max ulp vs foreach lerp {ulp}"} if ulp is not None else {}
        key = "_us"
    out = []
    for name in columns:
        t = row.get(name + key)
        out.append({"benchmark": "kernels", "case": case, "shape": shape, "tool": name,
                    "wall_s": None if t is None else t * scale, "value": row.get(name + "_" + rate),
                    "unit": unit, "status": row["status"][name], "note": note.get(name)})
    for name in columns:  # CUDA: device time inside a CUDA graph; the host's issue time beside it
        if name not in row.get("graph_status", {}):
            continue
        t, host = row.get(name + "_graph" + key), row.get(name + "_host" + key)
        out.append({"benchmark": "kernels", "case": f"{case}, in a CUDA graph", "shape": shape,
                    "tool": name, "wall_s": None if t is None else t * scale,
                    "value": row.get(name + "_graph_" + rate), "unit": unit,
                    "status": row["graph_status"][name],
                    "note": None if host is None else
                    f"device time per call, {GRAPH_CALLS} calls per graph; host issue time "
                    f"{host * scale * 1e6:.1f} us per call (no graph)"})
    for name, us in (row.get("host_cost_us") or {}).items():  # the EMA's Python cost, any device
        out.append({"benchmark": "kernels", "case": f"{case}, host Python per call", "shape": shape,
                    "tool": name, "wall_s": us * 1e-6, "status": "ok",
                    "note": "launches replaced by no-ops (ehrjepa.kernels.ema.host_cost_us)"})
    return out


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    att = res.get("attention") or []
    ax = axes[0]
    width = 0.8 / len(ATTN_COLUMNS)
    for i, col in enumerate(ATTN_COLUMNS):
        ys = [r.get(col + "_ms", math.nan) for r in att]
        ax.bar([j + i * width for j in range(len(att))], ys, width, label=col)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(att))])
    ax.set_xticklabels([f"{r['B']}x{r['T']}" for r in att])
    ax.set_ylabel("ms, forward + backward (lower is better)")
    ax.set_title(f"masked attention, H={att[0]['H']}, D={att[0]['D']}" if att else "masked attention")
    ax.legend(fontsize=8)
    ema = res.get("ema") or []
    ax = axes[1]
    width = 0.8 / len(EMA_COLUMNS)
    for i, col in enumerate(EMA_COLUMNS):
        ax.bar([j + i * width for j in range(len(ema))], [r.get(col + "_GBps", math.nan) for r in ema],
               width, label=col)
    copy = (res.get("ceilings") or {}).get("copy_GBps")
    if copy:
        ax.axhline(copy, color="k", linestyle="--", linewidth=1, label="copy ceiling")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ema))])
    ax.set_xticklabels([r["model"] for r in ema])
    ax.set_ylabel("GB/s at 12 bytes/param (higher is better)")
    ax.set_title("EMA update of fp32 targets")
    ax.legend(fontsize=8)
    fig.suptitle(f"{res['device']}, torch {res['torch']}, triton {res['triton']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        parser = argparse.ArgumentParser(prog="python -m bench kernels", description=__doc__.split("\n")[0])
        configure(parser)
        args = parser.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    if device == "cpu":  # our kernels run in the interpreter (read at Triton's first import)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    ours_status, triton_version = triton_status(device)
    rep = args.rep or (2 if device == "cpu" else 20)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else
           f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)",
           "torch": torch.__version__, "triton": triton_version, "ours_status": ours_status,
           "quick": quick, "date": time.strftime("%Y-%m-%d"), "errors": {}}
    record = results.destination(args.results, quick)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    H = 2 if quick and device == "cpu" else 6
    cases = {
        "ceilings": [lambda: ceilings(device, quick, rep)],
        "attention": [lambda B=B, T=T: attention_case(B, T, device, dtype, rep, ours_status, H=H,
                                                      profile_dir=args.profile)
                      for B, T in args.attn or (ATTN_CASES_QUICK if quick else ATTN_CASES)],
        "ema": [lambda m=m: ema_case(*m, device, rep, ours_status, profile_dir=args.profile)
                for m in (EMA_MODELS_QUICK if quick else EMA_MODELS)],
    }
    for name in args.only or SECTIONS:
        t = time.time()
        for run in cases[name]:
            try:
                row = run()
            except Exception as e:  # noqa: BLE001 - one failing case must not cost the others
                res["errors"][name] = f"{type(e).__name__}: {e}"[:400]
                continue
            if name == "ceilings":
                res[name] = row
            else:
                res.setdefault(name, []).append(row)
            if record:  # row by row: a killed run keeps what it measured
                results.append_rows(result_rows(name, row), record, packages=("torch", "triton"))
        print(f"[{name}: {time.time() - t:.1f} s]", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    print(markdown(res))
    if record:
        print(f"rows appended to {record}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.png:
        plot(res, args.png)
    failed = [f"{n}: {s}" for part in ("attention", "ema") for r in res.get(part) or []
              for n, s in r["status"].items() if s.startswith("failed")]
    return 1 if res["errors"] or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
