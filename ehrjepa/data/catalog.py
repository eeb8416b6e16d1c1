"""The feature catalog (configs/features.yaml): which itemids make each hourly feature.

`load_catalog(path=None)` reads and validates the YAML (unknown keys, duplicate names or itemids,
bad ranges and unknown conversions are errors naming the entry). `Catalog.lookup(table)` turns it
into dense arrays indexed by itemid, which the numba aggregation uses directly.
`Catalog.meds_lookup(codes)` does the same for the codes of a MEDS dataset: the `meds` templates
(say `LAB//{itemid}//*`) say how a code names an itemid of a table, so one catalog serves both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TABLES = ("chartevents", "labevents")
# conversion name -> (add, mul): value = (value + add) * mul
CONVERSIONS = {
    "fahrenheit_to_celsius": (-32.0, 5.0 / 9.0),
}
FEATURE_KEYS = {"name", "table", "unit", "itemids", "convert", "valid", "source"}
REQUIRED_KEYS = {"name", "table", "itemids", "valid"}
TOP_KEYS = {"sources", "features", "meds"}
# MEDS code templates per table, as MIMIC_IV_MEDS writes codes: {itemid} the itemid, * any text
MEDS_TEMPLATES = {"chartevents": "LAB//{itemid}//*", "labevents": "LAB//RESULT//{itemid}//*"}
MAX_ITEMID = 1 << 24  # dense lookup arrays; MIMIC-IV itemids are below 300,000


def shipped_config(name: str) -> Path:
    """A file of the shipped configs/ (features.yaml, phenotypes.yaml, micro.yaml, ...): inside the
    installed package (ehrjepa/configs/, where a wheel puts it), else the checkout's configs/."""
    import ehrjepa

    package = Path(ehrjepa.__file__).resolve().parent
    installed = package / "configs" / name
    return installed if installed.exists() else package.parent / "configs" / name


def default_catalog_path() -> Path:
    """The repository's configs/features.yaml."""
    return shipped_config("features.yaml")


@dataclass(frozen=True)
class Feature:
    name: str
    table: str
    itemids: tuple[int, ...]
    valid: tuple[float, float]  # inclusive, after conversion
    unit: str = ""
    convert: dict = field(default_factory=dict)  # itemid -> conversion name
    source: str = ""


@dataclass
class ItemLookup:
    """Dense per-itemid arrays for one table (index = itemid)."""
    feature: np.ndarray  # int32, feature column or -1
    add: np.ndarray  # float64, value = (value + add) * mul
    mul: np.ndarray  # float64
    low: np.ndarray  # float64 [F], valid range per feature column
    high: np.ndarray  # float64 [F]


@dataclass
class Catalog:
    features: list[Feature]
    path: Path | None = None
    sources: dict = field(default_factory=dict)
    meds: dict = field(default_factory=lambda: dict(MEDS_TEMPLATES))  # table -> code template

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def tables(self) -> set[str]:
        return {f.table for f in self.features}

    def lookup(self, table: str) -> ItemLookup:
        """Arrays mapping an itemid of `table` to its feature column and conversion."""
        ids = [i for f in self.features if f.table == table for i in f.itemids]
        size = (max(ids) + 1) if ids else 1
        feat = np.full(size, -1, np.int32)
        add = np.zeros(size, np.float64)
        mul = np.ones(size, np.float64)
        for col, f in enumerate(self.features):
            if f.table != table:
                continue
            for i in f.itemids:
                feat[i] = col
                if i in f.convert:
                    add[i], mul[i] = CONVERSIONS[f.convert[i]]
        low = np.array([f.valid[0] for f in self.features], np.float64)
        high = np.array([f.valid[1] for f in self.features], np.float64)
        return ItemLookup(feat, add, mul, low, high)


    def meds_lookup(self, codes: list[str]) -> "MedsLookup":
        """Arrays indexed by position in `codes` (the distinct codes of a MEDS dataset): feature
        column, conversion, and whether the code is a chartevents item; plus a warning for each
        itemid whose template matches no code."""
        itemids = {table: {} for table in TABLES}  # table -> itemid -> feature column
        for col, f in enumerate(self.features):
            for i in f.itemids:
                itemids[f.table][i] = col
        patterns = {t: meds_pattern(tpl) for t, tpl in self.meds.items()}
        size = max(len(codes), 1)
        feat = np.full(size, -1, np.int32)
        add = np.zeros(size, np.float64)
        mul = np.ones(size, np.float64)
        chart = np.zeros(size, np.uint8)
        matched: set[tuple[str, int]] = set()
        for c, code in enumerate(codes):
            for table, pattern in patterns.items():
                m = pattern.fullmatch(code)
                if m is None or int(m.group(1)) not in itemids[table]:
                    continue
                i = int(m.group(1))
                col = itemids[table][i]
                feat[c] = col
                if i in self.features[col].convert:
                    add[c], mul[c] = CONVERSIONS[self.features[col].convert[i]]
                chart[c] = table == "chartevents"
                matched.add((table, i))
                break
        warnings = [f"MEDS code pattern {self.meds[t].replace('{itemid}', str(i))!r} "
                    f"({self.features[col].name}) matches no code in the data"
                    for t in TABLES if t in self.meds
                    for i, col in itemids[t].items() if (t, i) not in matched]
        low = np.array([f.valid[0] for f in self.features], np.float64)
        high = np.array([f.valid[1] for f in self.features], np.float64)
        return MedsLookup(ItemLookup(feat, add, mul, low, high), chart, warnings)


@dataclass
class MedsLookup:
    """Catalog.meds_lookup's answer: `items` indexed by code position, `chart` 1 where the code
    is a chartevents item (located by its ICU stay when the data names it), the warnings."""
    items: ItemLookup
    chart: np.ndarray  # uint8 per code
    warnings: list[str]


def meds_pattern(template: str) -> "re.Pattern":
    """A code template (`{itemid}` once: the itemid's digits; `*`: any text) as a regex."""
    import re

    if template.count("{itemid}") != 1:
        raise ValueError(f"MEDS code template {template!r} must hold {{itemid}} exactly once")
    parts = [re.escape(p).replace(r"\*", ".*") for p in template.split("{itemid}")]
    return re.compile(r"(\d+)".join(parts))


def _entry_error(path, k, name, msg) -> ValueError:
    return ValueError(f"{path}: feature #{k} ({name!r}): {msg}")


def parse_catalog(data: dict, path: Path | str | None = None) -> Catalog:
    """Validate a catalog dict (as read from YAML)."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'features'")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (allowed: {sorted(TOP_KEYS)})")
    sources = data.get("sources") or {}
    entries = data.get("features")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: 'features' must be a non-empty list")
    features: list[Feature] = []
    seen_names: dict[str, int] = {}
    seen_ids: dict[int, str] = {}
    for k, e in enumerate(entries):
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(e, dict):
            raise _entry_error(path, k, name, "must be a mapping")
        unknown = set(e) - FEATURE_KEYS
        if unknown:
            raise _entry_error(path, k, name, f"unknown keys {sorted(unknown)} (allowed: {sorted(FEATURE_KEYS)})")
        missing = REQUIRED_KEYS - set(e)
        if missing:
            raise _entry_error(path, k, name, f"missing keys {sorted(missing)}")
        if not isinstance(name, str) or not name:
            raise _entry_error(path, k, name, "name must be a non-empty string")
        if name in seen_names:
            raise _entry_error(path, k, name, f"duplicate name (also feature #{seen_names[name]})")
        seen_names[name] = k
        if e["table"] not in TABLES:
            raise _entry_error(path, k, name, f"table must be one of {TABLES}, not {e['table']!r}")
        ids = e["itemids"]
        if not isinstance(ids, list) or not ids:
            raise _entry_error(path, k, name, "itemids must be a non-empty list")
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 < i < MAX_ITEMID:
                raise _entry_error(path, k, name, f"itemid {i!r} is not a positive integer below {MAX_ITEMID}")
            if i in seen_ids:
                raise _entry_error(path, k, name, f"duplicate itemid {i} (also in {seen_ids[i]!r})")
            seen_ids[i] = name
        valid = e["valid"]
        if (not isinstance(valid, list) or len(valid) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in valid)
                or not valid[0] <= valid[1]):
            raise _entry_error(path, k, name, f"valid must be [low, high] numbers with low <= high, not {valid!r}")
        convert = e.get("convert") or {}
        if not isinstance(convert, dict):
            raise _entry_error(path, k, name, "convert must map itemid -> conversion name")
        for i, conv in convert.items():
            if i not in ids:
                raise _entry_error(path, k, name, f"convert names itemid {i!r}, which is not in its itemids")
            if conv not in CONVERSIONS:
                raise _entry_error(path, k, name, f"unknown conversion {conv!r} (known: {sorted(CONVERSIONS)})")
        src = e.get("source", "")
        if src and sources and src not in sources:
            raise _entry_error(path, k, name, f"source {src!r} is not listed under 'sources'")
        features.append(Feature(name=name, table=e["table"], itemids=tuple(ids),
                                valid=(float(valid[0]), float(valid[1])), unit=str(e.get("unit", "")),
                                convert=dict(convert), source=src))
    meds = data.get("meds") or dict(MEDS_TEMPLATES)
    if not isinstance(meds, dict) or set(meds) - set(TABLES):
        raise ValueError(f"{path}: 'meds' must map tables {TABLES} to code templates, not {meds!r}")
    for table, template in meds.items():
        if not isinstance(template, str):
            raise ValueError(f"{path}: meds.{table} must be a code template string")
        try:
            meds_pattern(template)
        except ValueError as e:
            raise ValueError(f"{path}: meds.{table}: {e}") from None
    return Catalog(features, Path(path) if path else None, dict(sources), dict(meds))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate the feature catalog (default: the repository's configs/features.yaml)."""
    import yaml

    path = Path(path) if path is not None else default_catalog_path()
    if not path.exists():
        raise FileNotFoundError(f"feature catalog not found: {path}")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return parse_catalog(data, path)
