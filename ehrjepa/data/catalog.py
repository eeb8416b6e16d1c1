"""The feature catalog (configs/features.yaml): which itemids make each hourly feature.

`load_catalog(path=None)` reads and validates the YAML (unknown keys, duplicate names or itemids,
bad ranges and unknown conversions are errors naming the entry). `Catalog.lookup(table)` turns it
into dense arrays indexed by itemid, which the numba aggregation uses directly.
`Catalog.meds_lookup(codes)` does the same for the codes of a MEDS dataset: the `meds` templates
(say `LAB//{itemid}//*`) say how a code names an itemid of a table, so one catalog serves both.

One catalog serves every source: a feature names its MIMIC-IV itemids (`table`, `itemids`; the
MIMIC and MEDS sources), its PhysioNet 2012 parameter (`physionet2012`) and its PhysioNet 2019
column (`physionet2019`), each optional. `Catalog.for_source(name)` is the catalog of the features
a source has, in catalog order: the columns of that source's processed arrays. Each feature
declares its hourly `aggregation`: `mean` (default), `sum` (urine output) or `last` (the hour's
last value, for sources that give events in time order; not for MIMIC itemids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TABLES = ("chartevents", "labevents")
# conversion name -> (add, mul): value = (value + add) * mul
CONVERSIONS = {
    "fahrenheit_to_celsius": (-32.0, 5.0 / 9.0),
    "fraction_to_percent": (0.0, 100.0),
}
# sources and what names a feature in each: MIMIC tables and MEDS codes by itemid, the challenges
# by their parameter / column name
SOURCES = ("mimic", "meds", "physionet2012", "physionet2019")
PARAM_SOURCES = ("physionet2012", "physionet2019")
# hourly aggregations, in the codes the kernels use (events.AGG_*)
AGGREGATIONS = ("mean", "sum", "last")
FEATURE_KEYS = {"name", "table", "unit", "itemids", "convert", "valid", "source", "aggregation",
                *PARAM_SOURCES}
REQUIRED_KEYS = {"name", "valid"}
TOP_KEYS = {"sources", "features", "meds"}
# MEDS code templates per table, as MIMIC_IV_MEDS writes codes: {itemid} the itemid, * any text
# (labs: MIMIC_IV_MEDS since April 2026 writes LAB//RESULT//{itemid}//{unit} at storetime; before
# that LAB//{itemid}//{unit} at charttime, like chart items; lab and chart itemids do not collide,
# so both conventions are read and the manifest says which matched)
MEDS_TEMPLATES = {"chartevents": ["LAB//{itemid}//*"],
                  "labevents": ["LAB//RESULT//{itemid}//*", "LAB//{itemid}//*"]}
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
    table: str  # "" where the feature has no MIMIC-IV itemids
    itemids: tuple[int, ...]
    valid: tuple[float, float]  # inclusive, after conversion
    unit: str = ""
    convert: dict = field(default_factory=dict)  # itemid -> conversion name
    source: str = ""
    aggregation: str = "mean"
    params: dict = field(default_factory=dict)  # source -> (parameter name, conversion or "")

    def has(self, source: str) -> bool:
        """Whether `source` (SOURCES) measures this feature."""
        return bool(self.itemids) if source in ("mimic", "meds") else source in self.params


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
    # table -> code templates, tried in order
    meds: dict = field(default_factory=lambda: {t: list(v) for t, v in MEDS_TEMPLATES.items()})

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def for_source(self, source: str) -> "Catalog":
        """The catalog of the features `source` has (catalog order): its processed columns."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
        kept = [f for f in self.features if f.has(source)]
        if not kept:
            raise ValueError(f"{self.path}: no feature of the catalog is measured by {source}")
        return Catalog(kept, self.path, dict(self.sources), dict(self.meds))

    def aggregation_codes(self) -> np.ndarray:
        """uint8 per feature: its aggregation's index in AGGREGATIONS (the kernels' codes)."""
        return np.array([AGGREGATIONS.index(f.aggregation) for f in self.features], np.uint8)

    def params(self, source: str) -> dict[str, tuple[int, float, float]]:
        """{parameter name: (feature column, add, mul)} of a PARAM_SOURCES source."""
        out = {}
        for col, f in enumerate(self.features):
            if source in f.params:
                name, conv = f.params[source]
                out[name] = (col, *CONVERSIONS.get(conv, (0.0, 1.0)))
        return out

    def valid_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) float64 [F]: each feature's inclusive valid range after conversion."""
        return (np.array([f.valid[0] for f in self.features], np.float64),
                np.array([f.valid[1] for f in self.features], np.float64))

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
        return ItemLookup(feat, add, mul, *self.valid_ranges())


    def meds_lookup(self, codes: list[str]) -> "MedsLookup":
        """Arrays indexed by position in `codes` (the distinct codes of a MEDS dataset): feature
        column, conversion, and whether the code is a chartevents item; how many codes each
        template matched; and a warning for each itemid that no template of its table matches."""
        itemids = {table: {} for table in TABLES}  # table -> itemid -> feature column
        for col, f in enumerate(self.features):
            for i in f.itemids:
                itemids[f.table][i] = col
        patterns = [(t, tpl, meds_pattern(tpl)) for t, tpls in self.meds.items() for tpl in tpls]
        size = max(len(codes), 1)
        feat = np.full(size, -1, np.int32)
        add = np.zeros(size, np.float64)
        mul = np.ones(size, np.float64)
        chart = np.zeros(size, np.uint8)
        matched: set[tuple[str, int]] = set()
        by_template = {f"{t} {tpl}": 0 for t, tpl, _ in patterns}
        for c, code in enumerate(codes):
            for table, tpl, pattern in patterns:
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
                by_template[f"{table} {tpl}"] += 1
                break
        warnings = [f"MEDS code pattern {self.meds[t][0].replace('{itemid}', str(i))!r} "
                    f"({self.features[col].name}) matches no code in the data"
                    for t in TABLES if t in self.meds
                    for i, col in itemids[t].items() if (t, i) not in matched]
        return MedsLookup(ItemLookup(feat, add, mul, *self.valid_ranges()), chart, warnings,
                          by_template)


@dataclass
class MedsLookup:
    """Catalog.meds_lookup's answer: `items` indexed by code position, `chart` 1 where the code
    is a chartevents item (located by its ICU stay when the data names it), the warnings."""
    items: ItemLookup
    chart: np.ndarray  # uint8 per code
    warnings: list[str]
    by_template: dict = field(default_factory=dict)  # "table template" -> codes it matched

    def conventions(self) -> dict[str, int]:
        """{"labevents LAB//{itemid}//*": distinct codes matched, ...} for the templates that
        matched any code: which convention a dataset follows, for the manifest."""
        return {tpl: n for tpl, n in self.by_template.items() if n}


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
    seen_params: dict[str, dict[str, str]] = {}
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
        has_table, has_ids = "table" in e, "itemids" in e
        if has_table != has_ids:
            raise _entry_error(path, k, name, "table and itemids go together (MIMIC-IV items)")
        if has_table and e["table"] not in TABLES:
            raise _entry_error(path, k, name, f"table must be one of {TABLES}, not {e['table']!r}")
        ids = e.get("itemids", [])
        if has_ids and (not isinstance(ids, list) or not ids):
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
        aggregation = e.get("aggregation", "mean")
        if aggregation not in AGGREGATIONS:
            raise _entry_error(path, k, name, f"aggregation must be one of {AGGREGATIONS}, not "
                                              f"{aggregation!r}")
        if aggregation == "last" and ids:
            raise _entry_error(path, k, name, "aggregation 'last' needs events in time order: not "
                                              "for MIMIC-IV itemids (use mean or sum)")
        params = {}
        for ps in PARAM_SOURCES:
            if ps not in e:
                continue
            spec = e[ps]
            if isinstance(spec, str):
                spec = {"name": spec}
            if (not isinstance(spec, dict) or set(spec) - {"name", "convert"}
                    or not isinstance(spec.get("name"), str) or not spec["name"]):
                raise _entry_error(path, k, name, f"{ps} must be a parameter name or "
                                                  f"{{name: ..., convert: ...}}, not {e[ps]!r}")
            conv = spec.get("convert", "")
            if conv and conv not in CONVERSIONS:
                raise _entry_error(path, k, name, f"{ps}: unknown conversion {conv!r} (known: "
                                                  f"{sorted(CONVERSIONS)})")
            if spec["name"] in seen_params.setdefault(ps, {}):
                raise _entry_error(path, k, name, f"{ps} parameter {spec['name']!r} is also "
                                                  f"{seen_params[ps][spec['name']]!r}")
            seen_params[ps][spec["name"]] = name
            params[ps] = (spec["name"], conv)
        if not ids and not params:
            raise _entry_error(path, k, name, "no source measures it: give itemids (MIMIC-IV) or "
                                              f"a parameter of {' or '.join(PARAM_SOURCES)}")
        features.append(Feature(name=name, table=e.get("table", ""), itemids=tuple(ids),
                                valid=(float(valid[0]), float(valid[1])), unit=str(e.get("unit", "")),
                                convert=dict(convert), source=src, aggregation=aggregation,
                                params=params))
    meds = data.get("meds") or {t: list(v) for t, v in MEDS_TEMPLATES.items()}
    if not isinstance(meds, dict) or set(meds) - set(TABLES):
        raise ValueError(f"{path}: 'meds' must map tables {TABLES} to code templates, not {meds!r}")
    for table, templates in list(meds.items()):
        if isinstance(templates, str):
            templates = meds[table] = [templates]
        if not isinstance(templates, list) or not templates or \
                not all(isinstance(t, str) for t in templates):
            raise ValueError(f"{path}: meds.{table} must be a code template or a list of them")
        for template in templates:
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
