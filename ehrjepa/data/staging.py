"""Building an output folder beside its final place and moving it in whole.

`staged_output(OUT)` yields an empty temporary folder `.OUT.tmp-PID` in OUT's parent (the same
filesystem, so renames are atomic). When the body succeeds the folder replaces OUT: a previous
OUT is renamed aside to `.OUT.old-PID`, the new one renamed in, the old one removed. When the
body fails the folder is removed. A run killed with SIGKILL cannot clean up, so each run first
removes the leftovers of dead runs (their PID no longer exists); if one died between the two
renames, its `.old` folder is the previous complete OUT and is renamed back. Either way OUT is
the previous complete output or a new complete one, or absent; never partial.

Before anything is touched OUT is checked (`check_out`): an OUT that is, holds or lies inside one
of the run's inputs is refused, and so is an existing non-empty folder that is not a processed
folder of ours (no manifest.json of `ehrjepa preprocess`), so that no input or foreign folder is
ever replaced. One run at a time per OUT: the run holds a lock on `.OUT.lock` beside OUT
(folder_lock.py) from before the first change to the end; a second run refuses at once.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ehrjepa.folder_lock import folder_lock

PAUSE_ENV = "EHRJEPA_TEST_PAUSE"  # tests of killed runs: the name of a pause_point to stop at
NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextmanager
def staged_output(out: str | Path, inputs=()):
    """A temporary folder to build OUT in, moved into place when the body succeeds.

    inputs: the run's input paths (folders or files); OUT may not be, hold or lie inside one.
    Refuses (ValueError, FileExistsError, FolderInUse: one line naming OUT) before touching
    anything."""
    out = Path(os.path.abspath(out))
    check_out(out, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent.resolve() / f".{out.name}.lock"
    with folder_lock(out, lock, hint="wait for it to end, or choose another --out"):
        with _staged(out) as tmp:
            yield tmp


@contextmanager
def _staged(out: Path):
    clean_stale(out)
    tmp = _sibling(out, "tmp", os.getpid())
    tmp.mkdir()
    try:
        yield tmp
        _replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in NO_SPACE:
            raise OSError(f"{out}: cannot write the output ({os.strerror(e.errno)}); nothing was "
                          "changed there: free some space and run again") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_out(out: Path, inputs=()) -> None:
    """Refuse an OUT whose replacement would destroy what is not ours: one of `inputs`, a folder
    holding one, a folder inside one, a file, a non-empty folder without our manifest.json.
    Paths are compared with symlinks resolved (OUT itself and as the link it may be)."""
    outs = {out.resolve(), out.parent.resolve() / out.name}
    for given in inputs:
        src = Path(os.path.abspath(given)).resolve()
        for o in outs:
            if o == src:
                raise ValueError(f"--out {out} is the input {given}: choose another --out "
                                 "(it would replace the input)")
            if o in src.parents:
                raise ValueError(f"--out {out} holds the input {given}: choose another --out "
                                 "(replacing it would delete the input)")
            if src in o.parents:
                raise ValueError(f"--out {out} lies inside the input {given}: choose an --out "
                                 "outside it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_processed(out):
        raise FileExistsError(f"{out} is not empty and is not a processed folder (no manifest.json "
                              "of ehrjepa preprocess): choose a new or empty --out (only a "
                              "processed folder is replaced)")


def is_processed(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json written by `ehrjepa preprocess` (processed.py)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"tables", "n_stays", "total_hours"} <= manifest.keys()


def _sibling(out: Path, kind: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{kind}-{pid}"


def _replace(new: Path, out: Path) -> None:
    """Move `new` to `out`, replacing a previous `out`."""
    if not out.exists():
        os.rename(new, out)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder: choose another --out")
    old = _sibling(out, "old", os.getpid())
    os.rename(out, old)
    pause_point("swap")
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale(out: Path) -> None:
    """Remove the temporary folders of dead runs for `out`; restore an `.old` one if `out` is
    missing (its run died between renaming it aside and renaming the new one in)."""
    for kind in ("old", "tmp"):  # old first: it may be the only complete output left
        for p in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = p.name.rsplit("-", 1)[1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.rename(p, out)
            else:
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our PID
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reserve_space(path: Path) -> None:
    """Allocate a file's blocks now, so that writing it through a memory map cannot fail later
    (a full disk under a map is a SIGBUS, not an error). Filesystems that cannot are skipped."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise


def pause_point(name: str) -> None:
    """With EHRJEPA_TEST_PAUSE=name, say so on stderr and sleep: the fault tests kill the run
    here (tests/test_faults_preprocess.py) or start a second run beside it
(tests/test_faults_out.py). Costs one dictionary lookup otherwise."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"ehrjepa: paused at {name} (process {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(300)
