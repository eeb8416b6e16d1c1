"""Building an output folder beside its final place and moving it in whole.

`staged_output(OUT)` yields an empty temporary folder `.OUT.tmp-PID` in OUT's parent (the same
filesystem, so renames are atomic). When the body succeeds the folder replaces OUT: a previous
OUT is renamed aside to `.OUT.old-PID`, the new one renamed in, the old one removed. When the
body fails the folder is removed. A run killed with SIGKILL cannot clean up, so each run first
removes the leftovers of dead runs (their PID no longer exists); if one died between the two
renames, its `.old` folder is the previous complete OUT and is renamed back. Either way OUT is
the previous complete output or a new complete one, or absent; never partial.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PAUSE_ENV = "EHRJEPA_TEST_PAUSE"  # tests of killed runs: the name of a pause_point to stop at
NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextmanager
def staged_output(out: str | Path):
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
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
    here (tests/test_faults_preprocess.py). Costs one dictionary lookup otherwise."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"ehrjepa preprocess: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(300)
