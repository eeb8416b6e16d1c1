"""`python -m bench render [--check]`: rebuild the tables of bench/RESULTS.md from bench/results.csv.

RESULTS.md keeps its prose; only the text between `<!-- results:BENCHMARK -->` and
`<!-- /results:BENCHMARK -->` is generated. Each benchmark gets one table per machine: a row per
(case, shape), a column per tool, each cell from the newest row measured for it (rows are appended
in time order, so the last one wins), with the dates, commands and notes the rows carry below it.
--check exits 1, changing nothing, if RESULTS.md is not what the CSV renders to (a test runs it).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench.results import RESULTS_CSV, read_rows

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
BLOCK = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)


def seconds(s: float) -> str:
    """1.10 s, 18.76 s, 249 ms, 73.00 us: the unit that fits, two decimals below 100."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale or unit == "us":
            v = s / scale
            return f"{v:.2f} {unit}" if v < 100 else f"{v:,.0f} {unit}"


def cell(row: dict) -> str:
    """One measurement: its time, then its derived value or peak RSS; a status otherwise."""
    status = row["status"]
    if status not in ("ok", "interpreter"):
        return status.split(":")[0]
    parts = [seconds(row["wall_s"])] if row["wall_s"] is not None else []
    if status == "interpreter":
        return f"{parts[0]} (interpreter)" if parts else "interpreter"
    extra = []
    if row["value"] is not None:
        extra.append(f"{row['value']:,.3g} {row['unit']}")
    if row["rss_mb"] is not None:
        extra.append(f"{row['rss_mb']:,.0f} MB")
    if not parts:
        return ", ".join(extra)
    return parts[0] + (f" ({', '.join(extra)})" if extra else "")


def table(rows: list[dict]) -> str:
    """One machine's rows of one benchmark as a markdown table plus where they came from."""
    latest, cases, tools = {}, [], []
    for r in rows:  # file order is time order: the last row of a (case, shape, tool) wins
        case = (r["case"], r["shape"])
        latest[case, r["tool"]] = r
        cases += [case] if case not in cases else []
        tools += [r["tool"]] if r["tool"] not in tools else []
    lines = ["| case | shape | " + " | ".join(tools) + " |", "|---|---" + "|---" * len(tools) + "|"]
    for case in cases:
        cells = [cell(latest[case, t]) if (case, t) in latest else "" for t in tools]
        lines.append(f"| {case[0]} | {case[1]} | " + " | ".join(cells) + " |")
    shown = list(latest.values())
    sources = dict.fromkeys(f"{r['date']}, `{r['command']}`, versions: {r['versions']}" for r in shown)
    lines += [""] + [f"- {s}" for s in sources]
    notes = dict.fromkeys(r["note"] for r in shown if r["note"])
    lines += [f"- note: {n}" for n in notes]
    if any(r["status"] == "interpreter" for r in shown):
        lines.append("- (interpreter): Triton's CPU interpreter, proof that the kernel runs, not a speed")
    return "\n".join(lines)


def render_block(benchmark: str, rows: list[dict]) -> str:
    rows = [r for r in rows if r["benchmark"] == benchmark]
    if not rows:
        return "No rows yet in bench/results.csv.\n"
    machines = list(dict.fromkeys(r["machine"] for r in rows))
    return "\n\n".join(f"**{m}**\n\n" + table([r for r in rows if r["machine"] == m])
                       for m in machines) + "\n"


def render(text: str, rows: list[dict]) -> str:
    """`text` with every results block regenerated from `rows`."""
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group(2), rows) + m.group(4), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench render", description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default=str(RESULTS_CSV), help="results file (default: %(default)s)")
    parser.add_argument("--md", default=str(RESULTS_MD), help="markdown to update (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only say whether the markdown is current")
    args = parser.parse_args(argv)
    md = Path(args.md)
    if not md.exists():
        print(f"bench render: {md} does not exist", file=sys.stderr)
        return 2
    if not Path(args.csv).exists():
        print(f"bench render: {args.csv} does not exist", file=sys.stderr)
        return 2
    text = md.read_text(encoding="utf-8")
    if not BLOCK.search(text):
        print(f"bench render: {md} has no <!-- results:NAME --> ... <!-- /results:NAME --> block",
              file=sys.stderr)
        return 2
    new = render(text, read_rows(args.csv))
    if args.check:
        if new != text:
            print(f"bench render: {md} is out of date; run python -m bench render", file=sys.stderr)
            return 1
        print(f"{md} is current")
        return 0
    if new != text:
        tmp = md.with_suffix(".md.tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(md)
    print(f"rendered {md} from {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
