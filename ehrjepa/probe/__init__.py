"""`ehrjepa probe`: frozen-encoder embeddings, logistic-regression probes, baselines and a report.

`run_probe(run_dir, data_dir, out_dir, ...) -> dict` is the Python API (used by the CLI and the
demo); torch and scikit-learn are imported only when it runs.
"""


def run_probe(*args, **kwargs) -> dict:
    from ehrjepa.probe.evaluate import run_probe as _run_probe

    return _run_probe(*args, **kwargs)


run_probe.__doc__ = """Probe a pretrained run (jepa) against random_init and raw_features.

    run_probe(run_dir, data_dir, out_dir, checkpoint=None, encoder="target", hours=24, device="cpu",
              batch_size=256, n_bootstrap=1000, seed=0, progress=True) -> report dict
    Writes out_dir/report.json, report.md and PNG plots."""
