"""ehrjepa: JEPA pretraining of patient representations from hourly MIMIC-IV ICU series."""

__version__ = "0.1.0"
