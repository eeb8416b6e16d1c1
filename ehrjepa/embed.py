"""`ehrjepa embed`: stay embeddings of a pretrained encoder as a parquet file, for users' own models.

    ehrjepa embed --run RUN --data OUT --out FILE.parquet [--hours H] [--every K] [--encoder target|context]

One row per stay with at least H hours: the mean over hours [0, H) of the encoder's hour
embeddings, all of those hours as context (the probe's embedding, the same function). With
--every K, one row per stay and hour h = K, 2K, ... up to H: the mean over hours [0, h) of the
encoder run on hours [0, h) alone, so a row never sees an hour at or after its `hour` (a stay
gives rows up to its own length). Columns: subject_id, stay_id, split, hour (hours [0, hour)
were used) and embedding, a fixed-size list<float32> of the encoder's width. Rows come hour by
hour, stays in the processed data's order within each hour. The file is written beside FILE and
renamed when complete, so FILE is never half-written. Any fault is one line.

    import pyarrow.parquet as pq
    table = pq.read_table("emb.parquet")
    width = table.schema.field("embedding").type.list_size
    x = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, width)  # [rows, width]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HOURS = 24  # the probe's hours (ehrjepa.probe.tasks.HOURS), repeated here so --help imports nothing heavy


def hours_grid(hours: int, every: int | None) -> list[int]:
    """The `hour` values of the rows: [hours], or every, 2 * every, ... <= hours."""
    if hours < 1:
        raise ValueError(f"--hours must be >= 1, not {hours}")
    if every is None:
        return [hours]
    if every < 1:
        raise ValueError(f"--every must be >= 1, not {every}")
    if every > hours:
        raise ValueError(f"--every {every} is more than --hours {hours}: no row would be written")
    return list(range(every, hours + 1, every))


def embed_hours(model, processed, grid: list[int], encoder: str = "target", device="cpu", batch_size: int = 256,
                progress: bool = True):
    """Yield (hour, stay rows int64 [n], embeddings float32 [n, D]) for each hour of `grid`: the stays
    with at least `hour` hours, each embedded over hours [0, hour) alone (probe.embeddings.embed_stays)."""
    from ehrjepa.data import WindowDataset
    from ehrjepa.probe.embeddings import embed_stays

    for hour in grid:
        dataset = WindowDataset.for_hours(processed, None, hour)
        emb, stays = embed_stays(model, dataset, encoder, device, batch_size, progress, desc=f"embed hour {hour}")
        yield hour, stays, emb


def write_embeddings(path: Path, processed, parts, width: int) -> int:
    """Stream (hour, stay rows, embeddings) parts into parquet file `path`, atomically; returns rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("subject_id", pa.int64()), ("stay_id", pa.int64()), ("split", pa.string()),
                        ("hour", pa.int32()), ("embedding", pa.list_(pa.float32(), width))])
    stays = processed.stays
    subject, stay_id = stays.column("subject_id").to_numpy(), stays.column("stay_id").to_numpy()
    split = stays.column("split").combine_chunks()
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for hour, rows, emb in parts:
                if len(rows) == 0:
                    continue
                flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), pa.float32())
                writer.write_table(pa.table({
                    "subject_id": pa.array(subject[rows], pa.int64()),
                    "stay_id": pa.array(stay_id[rows], pa.int64()),
                    "split": split.take(pa.array(rows)),
                    "hour": pa.array(np.full(len(rows), hour, np.int32)),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, width),
                }, schema=schema))
                written += len(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory of `ehrjepa train` (RUN)")
    parser.add_argument("--data", required=True, help="processed data directory of `ehrjepa preprocess` (OUT)")
    parser.add_argument("--out", required=True, help="parquet file to write (FILE.parquet)")
    parser.add_argument("--hours", type=int, default=HOURS,
                        help="embed hours [0, HOURS) of stays with at least HOURS hours (default: %(default)s)")
    parser.add_argument("--every", type=int, default=None, metavar="K",
                        help="instead, one row per stay and hour K, 2K, ... <= HOURS, each from the hours before "
                             "it only (default: one row per stay)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target",
                        help="the EMA target encoder or the context encoder (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to embed with (default: RUN/checkpoints/best.pt, else last.pt)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="stays per batch (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: show them)")


def run_embed(run_dir, data_dir, out, hours: int = HOURS, every: int | None = None, encoder: str = "target",
              checkpoint=None, device: str = "cpu", batch_size: int = 256, progress: bool = True) -> dict:
    """Write the embeddings file; returns {"rows", "stays", "hours", "width", "checkpoint"}."""
    import numpy as np

    from ehrjepa.device import resolve_device
    from ehrjepa.probe.run import check_against_checkpoint, check_hours, load_trained, open_data, resolve_checkpoint

    grid = hours_grid(hours, every)
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder: --out names the parquet file to write")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent} does not exist (the folder of --out)")
    ckpt_path = resolve_checkpoint(Path(run_dir), checkpoint)
    device = resolve_device(device)
    processed = open_data(data_dir)
    # the first hour of the grid is the fewest a stay needs for a row
    check_hours(processed, grid[0], data_dir, option="--every" if every is not None else "--hours")
    model, config, ckpt = load_trained(ckpt_path)
    check_against_checkpoint(ckpt, ckpt_path, processed, data_dir, "embed")
    if grid[-1] > config.data.max_hours:
        raise ValueError(f"--hours {grid[-1]} is longer than the model's max_hours {config.data.max_hours} ({ckpt_path})")
    width = config.model.resolved().width
    seen = set()

    def parts():
        for hour, rows, emb in embed_hours(model, processed, grid, encoder, device, batch_size, progress):
            seen.update(np.asarray(rows).tolist())
            yield hour, rows, emb

    rows = write_embeddings(out, processed, parts(), width)
    return {"rows": rows, "stays": len(seen), "of_stays": processed.n_stays, "hours": grid, "width": width,
            "checkpoint": str(ckpt_path)}


def main(args: argparse.Namespace) -> int:
    try:
        hours_grid(args.hours, args.every)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, not {args.batch_size}")
    except ValueError as e:
        print(f"ehrjepa embed: {e}", file=sys.stderr)
        return 2
    try:
        info = run_embed(args.run, args.data, args.out, hours=args.hours, every=args.every, encoder=args.encoder,
                         checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size,
                         progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as e:  # each names its file on its first line
        text = str(e).strip()
        print(f"ehrjepa embed: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1
    at = f"hour {info['hours'][0]}" if len(info["hours"]) == 1 else f"hours {info['hours'][0]}, ..., {info['hours'][-1]}"
    print(f"wrote {args.out}: {info['rows']} rows ({info['stays']} of {info['of_stays']} stays, {at}), "
          f"{info['width']}-wide embeddings of the {args.encoder} encoder of {info['checkpoint']}")
    return 0
