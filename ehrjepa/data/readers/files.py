"""Finding a MIMIC-IV table on disk, its format, what reading it saw, and its progress bar."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = (".csv.gz", ".csv", ".parquet")  # searched in this order
BLOCK_ROWS = 1 << 20  # rows per block handed to a caller, all formats (bounds the column arrays)


def find_table(mimic_dir: str | Path, module: str, name: str) -> Path | None:
    """MIMIC_DIR/module/name.{csv.gz,csv,parquet} if exactly one exists, None if none does.

    Two of them (say a csv beside the csv.gz it was inflated from) are an error: which one is
    current is the user's call, not ours."""
    found = [p for p in (Path(mimic_dir) / module / f"{name}{ext}" for ext in FORMATS) if p.exists()]
    if len(found) > 1:
        raise ValueError(f"{' and '.join(map(str, found))} both exist: keep one of them "
                         f"(remove or move the other) so that {name} is read from one file")
    return found[0] if found else None


def table_format(path: Path) -> str:
    name = path.name
    for ext in FORMATS:
        if name.endswith(ext):
            return ext[1:]
    raise ValueError(f"{path}: unknown table format (expected one of {', '.join(FORMATS)})")


@dataclass
class TableStats:
    """What reading a table saw: data rows (bad lines included) and bad lines skipped."""
    path: str
    rows_read: int = 0
    bad_line: int = 0
    extra: dict = field(default_factory=dict)


class Progress:
    """A tqdm bar that only appears when a table takes more than half a second."""

    def __init__(self, path: Path, fmt: str, desc: str | None):
        from tqdm.auto import tqdm

        if fmt == "parquet":
            from .parquet import parquet_rows

            total, unit, scale = parquet_rows(path), "rows", False
        else:  # bytes of the file as stored (compressed for csv.gz)
            total, unit, scale = path.stat().st_size, "B", True
        self.bar = tqdm(total=total, unit=unit, unit_scale=scale, delay=0.5, leave=False,
                        desc=desc or path.name)
        self.done = 0

    def update_to(self, n: int) -> None:
        if n > self.done:
            self.bar.update(n - self.done)
            self.done = n

    def close(self) -> None:
        self.bar.close()
