"""folder_lock: one holder at a time, the holder's PID in the refusal, and never stuck after the
holder is killed (kill -9). The commands' use of it is tested in tests/test_faults_out.py."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ehrjepa.folder_lock import FolderInUse, folder_lock

REPO = Path(__file__).resolve().parents[1]


def hold_in_child(folder, lock):
    """A child process holding the lock until killed; returns it once it holds the lock."""
    code = textwrap.dedent(f"""
        import time
        from ehrjepa.folder_lock import folder_lock
        with folder_lock({str(folder)!r}, {str(lock)!r}):
            print("held", flush=True)
            time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_is_refused_naming_the_first_and_a_killed_holder_frees_it(tmp_path):
    folder, lock = tmp_path / "run", tmp_path / ".run.lock"
    child = hold_in_child(folder, lock)
    try:
        with pytest.raises(FolderInUse, match=rf"^{folder} is in use by process {child.pid}: "
                                              r"choose another$"):
            with folder_lock(folder, lock, hint="choose another"):
                pass
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays behind
        child.wait()
        child.stdout.close()
    assert lock.exists()
    with folder_lock(folder, lock):  # not stuck: the kernel dropped the dead process's lock
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()  # removed on release


def test_released_lock_is_removed_and_can_be_taken_again(tmp_path):
    lock = tmp_path / ".x.lock"
    for _ in range(2):
        with folder_lock(tmp_path / "x", lock):
            assert lock.read_text().strip() == str(os.getpid())
        assert not lock.exists()


def test_an_error_in_the_body_releases_the_lock(tmp_path):
    lock = tmp_path / ".x.lock"
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path / "x", lock):
            raise RuntimeError("boom")
    assert not lock.exists()
    with folder_lock(tmp_path / "x", lock):
        pass


def test_a_lock_file_replaced_after_opening_is_opened_again(tmp_path, monkeypatch):
    """The holder removes the file on release: a process that opened the old file just before
    must not hold a lock on a file no longer at the path (a third one would take the new file)."""
    import ehrjepa.folder_lock as fl

    lock = tmp_path / ".x.lock"
    real_open, opened = os.open, []

    def open_then_replace(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        opened.append(fd)
        if len(opened) == 1:  # the first open: the file is then removed and made anew
            os.unlink(path)
            Path(path).write_text("")
        return fd

    monkeypatch.setattr(fl.os, "open", open_then_replace)
    with folder_lock(tmp_path / "x", lock):
        assert len(opened) == 2
        assert lock.read_text() == f"{os.getpid()}\n"
