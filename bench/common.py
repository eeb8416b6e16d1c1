"""Shared helpers for the benchmarks: timing a child process (wall time, peak RSS), tables, JSON.

Peak RSS of a child comes from two sources and the larger is reported: the kernel's own high-water
mark from `os.wait4` in a small launcher process (exact, but a process tree reports its largest
member, not the sum), and psutil polling of the whole tree every 20 ms (sums workers, may miss a
short spike).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float  # user + system time of the child and its descendants: steadier than wall time
    peak_rss_bytes: int
    rss_wait4_bytes: int  # ru_maxrss of the child (its largest process)
    rss_polled_bytes: int  # largest sum of RSS over the child's process tree seen while polling
    returncode: int
    stdout: str
    stderr: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("stdout"), d.pop("stderr")
        return d


def _poll_tree_rss(pid: int, stop: threading.Event, peak: list[int], every_s: float = 0.02):
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root] + root.children(recursive=True)
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak[0] = max(peak[0], total)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        stop.wait(every_s)


# The child is started through this small launcher: ru_maxrss survives fork and exec, so a tool
# forked straight from this (large) process would report this process's RSS as its own peak.
_LAUNCHER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(report, "w") as f:
    f.write(f"{wall} {usage.ru_maxrss * 1024} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status) & 255)
"""


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | Path | None = None,
                 timeout_s: float | None = None) -> Measurement:
    """Run `cmd` as a child process; return its wall time, peak RSS, exit code and output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rusage") as report:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, report.name, *cmd],
                                stdout=out, stderr=err, env=env, cwd=cwd)
        stop, peak = threading.Event(), [0]
        poller = threading.Thread(target=_poll_tree_rss, args=(proc.pid, stop, peak), daemon=True)
        poller.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
        fields = report.read().split()
        if len(fields) == 3:  # the launcher's own numbers: without its start-up, exact peak
            wall, wait4_rss, cpu = float(fields[0]), int(fields[1]), float(fields[2])
        else:
            wait4_rss, cpu = 0, float("nan")
        out.seek(0), err.seek(0)
        return Measurement(wall_s=wall, cpu_s=cpu, peak_rss_bytes=max(wait4_rss, peak[0]),
                           rss_wait4_bytes=wait4_rss, rss_polled_bytes=peak[0],
                           returncode=proc.returncode,
                           stdout=out.read().decode(errors="replace"),
                           stderr=err.read().decode(errors="replace"))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    numeric = [all(_is_number(r[j]) for r in cells[1:]) and len(cells) > 1 for j in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                            for w, num in zip(widths, numeric)) + "|"]
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                      for c, w, num in zip(r, widths, numeric)) + " |")
    return "\n".join(lines)


def _is_number(s: str) -> bool:
    s = s.replace(",", "").replace("x", "").split(" ")[0]
    try:
        float(s)
        return True
    except ValueError:
        return s in ("-", "")


def machine_info() -> dict:
    """Where the numbers were measured."""
    vm = psutil.virtual_memory()
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "memory_gb": round(vm.total / 1e9, 1),
            "load_avg_1m": os.getloadavg()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
