"""Reading every file of a folder or an archive into one buffer, for the challenges' sources.

`read_files(path, wanted)`: a folder (searched recursively), a `.tar`, `.tar.gz` / `.tgz` or a
`.zip` gives one uint8 buffer and each wanted file's [start, end) in it, without unpacking
anything to disk. A tar is inflated in memory (ISA-L's gzip where installed, every gzip member)
and its 512-byte headers are walked by a numba kernel (`walk_tar`; GNU long names, pax headers
skipped), so its members are used where they lie in the buffer, uncopied: many times faster than
the standard library's tarfile objects. A truncated or corrupt archive is an error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numba as nb
import numpy as np


@dataclass
class Files:
    """The wanted files of one PATH: file k is buf[starts[k]:ends[k]]."""
    path: Path
    buf: np.ndarray  # uint8
    members: list[str]  # each file's name relative to PATH (inside the archive)
    names: list[str]  # each file's name as a message gives it (its path, or ARCHIVE:MEMBER)
    starts: np.ndarray
    ends: np.ndarray
    other_files: int = 0  # files passed over (not wanted)


def read_files(path: Path, wanted: Callable[[str], bool]) -> Files:
    """The files of a folder or a .tar / .tar.gz / .tgz / .zip archive whose relative name
    `wanted` accepts, in the order found (module docstring)."""
    name = path.name.lower()
    if path.is_dir():
        return _read_folder(path, wanted)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _read_tar(path, wanted)
    if name.endswith(".zip"):
        return _read_zip(path, wanted)
    raise ValueError(f"{path}: not a folder, nor a .tar.gz, .tgz, .tar or .zip archive")


def _read_folder(path: Path, wanted) -> Files:
    files, other = [], 0
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        if wanted(p.relative_to(path).as_posix()):
            files.append(p)
        else:
            other += 1
    parts = [p.read_bytes() for p in files]
    lengths = np.array([len(b) for b in parts], np.int64)
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(parts), np.uint8)
    return Files(path, buf, [p.relative_to(path).as_posix() for p in files],
                 [str(p) for p in files], ends - lengths, ends, other)


def inflate(path: Path, raw: bytes) -> bytes:
    """A .gz's bytes inflated (every gzip member); a truncated or corrupt stream is an error."""
    try:
        from isal.isal_zlib import decompressobj, error as ZlibError
    except ImportError:  # isal is a requirement; plain zlib where it cannot be installed
        from zlib import decompressobj, error as ZlibError
    parts = []
    try:
        while raw:
            d = decompressobj(wbits=31)
            parts.append(d.decompress(raw))
            if not d.eof:
                raise ValueError(f"{path}: truncated archive (the gzip stream ends early); "
                                 "download it again")
            raw = d.unused_data
    except ZlibError as e:
        raise ValueError(f"{path}: corrupt archive ({e}); download it again") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_tar(path: Path, wanted) -> Files:
    raw = path.read_bytes()
    if path.name.lower().endswith((".gz", ".tgz")):
        raw = inflate(path, raw)
    buf = np.frombuffer(raw, np.uint8)
    cap = len(raw) // 512 + 1
    out = tuple(np.empty(cap, np.int64) for _ in range(4))
    n, status = walk_tar(buf, *out)
    starts, ends, name_s, name_e = (a[:n] for a in out)
    if status == TAR_TRUNCATED:
        raise ValueError(f"{path}: truncated archive (it ends inside a member); download it again")
    if status == TAR_BAD_HEADER:
        raise ValueError(f"{path}: corrupt archive (a tar header's checksum is wrong); download "
                         "it again")
    members, keep, other = [], [], 0
    for k in range(n):
        member = raw[name_s[k]:name_e[k]].decode("utf-8", "replace")
        if wanted(member):
            keep.append(k)
            members.append(member)
        else:
            other += 1
    return Files(path, buf, members, [f"{path}:{m}" for m in members], starts[keep], ends[keep],
                 other)


def _read_zip(path: Path, wanted) -> Files:
    import zipfile
    import zlib

    parts, members, other = [], [], 0
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                if not wanted(info.filename):
                    other += 1
                    continue
                members.append(info.filename)
                parts.append(z.read(info))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        where = f" at {path}:{members[-1]}" if members and len(parts) < len(members) else ""
        raise ValueError(f"{path}: truncated or corrupt zip archive{where} ({e}); download it "
                         "again") from None
    lengths = np.array([len(b) for b in parts], np.int64)
    ends = np.cumsum(lengths)
    return Files(path, np.frombuffer(b"".join(parts), np.uint8), members,
                 [f"{path}:{m}" for m in members], ends - lengths, ends, other)


TAR_END, TAR_TRUNCATED, TAR_BAD_HEADER = 0, 1, 2


@nb.njit(cache=True, nogil=True)
def _octal(buf, s, e):
    """An octal tar number field (NUL / space padded); base-256 when the first byte's top bit
    is set (GNU, sizes past 8 GiB). -1 when it holds anything else."""
    if buf[s] & 0x80:
        v = np.int64(buf[s] & 0x7F)
        for i in range(s + 1, e):
            v = (v << 8) | np.int64(buf[i])
        return v
    v = np.int64(0)
    seen = False
    for i in range(s, e):
        c = buf[i]
        if c == 0 or c == 32:
            if seen:
                break
            continue
        if c < 48 or c > 55:
            return -1
        v = v * 8 + (c - 48)
        seen = True
    return v


@nb.njit(cache=True, nogil=True)
def walk_tar(buf, starts, ends, name_s, name_e):
    """The regular members of the tar archive in buf: their data [starts, ends) and name
    [name_s, name_e) in buf (GNU long names from their 'L' block; pax headers skipped).
    Returns (members, TAR_END | TAR_TRUNCATED | TAR_BAD_HEADER)."""
    n = 0
    pos = 0
    size_all = buf.shape[0]
    long_s = -1
    long_e = -1
    while pos < size_all:
        if pos + 512 > size_all:
            return n, TAR_TRUNCATED
        zero = True
        for i in range(pos, pos + 512):
            if buf[i] != 0:
                zero = False
                break
        if zero:
            return n, TAR_END
        # header checksum: the byte sum with the checksum field read as spaces
        total = np.int64(0)
        for i in range(pos, pos + 512):
            total += 32 if 148 <= i - pos < 156 else buf[i]
        if _octal(buf, pos + 148, pos + 156) != total:
            return n, TAR_BAD_HEADER
        size = _octal(buf, pos + 124, pos + 136)
        if size < 0:
            return n, TAR_BAD_HEADER
        data = pos + 512
        if data + size > size_all:
            return n, TAR_TRUNCATED
        kind = buf[pos + 156]
        if kind == 76:  # 'L': the next member's long name
            long_s = data
            long_e = data + size
            while long_e > long_s and buf[long_e - 1] == 0:
                long_e -= 1
        elif kind == 48 or kind == 0 or kind == 55:  # '0', NUL, '7': a regular file
            starts[n] = data
            ends[n] = data + size
            if long_s >= 0:
                name_s[n] = long_s
                name_e[n] = long_e
            else:  # the name field (the ustar prefix holds only folders, not needed here)
                e = pos
                while e < pos + 100 and buf[e] != 0:
                    e += 1
                name_s[n] = pos
                name_e[n] = e
            n += 1
            long_s = -1
        elif kind != 120 and kind != 103:  # not a pax header ('x', 'g'): folders, links
            long_s = -1
        pos = data + (size + 511) // 512 * 512
    return n, TAR_END
