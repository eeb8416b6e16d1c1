"""`ehrjepa probe`: frozen-encoder embeddings, logistic-regression probes, baselines and a report.

    tasks.py       the tasks, their labels and HOURS, the hours [0, HOURS) the probe embeds; --tasks
    macro.py       phenotype_macro: the mean AUROC/AUPRC over the phenotype tasks scored
    aki.py         aki_24_72h: KDIGO creatinine criteria on the processed labs
    baselines.py   raw_features: per-feature summary statistics of the same hours
    embeddings.py  mean-pooled embeddings of a frozen encoder
    metrics.py     AUROC, AUPRC and the paired bootstrap
    fit.py         the probes, one per (task, method): logistic regression, raw_gbdt's trees
    finetune.py    jepa_finetune and scratch: an encoder and a head trained end to end
    label_efficiency.py  the probes refit on fractions of the labelled subjects
    run.py         run_probe: a whole run, from its checkpoint to REPORT
    report.py      REPORT/report.json, report.md and the plots
    cli.py         `ehrjepa probe`
    finetune_run.py, finetune_cli.py   `ehrjepa finetune`: one fine-tuning run to DIR/result.json

`run_probe(run_dir, data_dir, out_dir, ...) -> dict` is the Python API (used by the CLI and the
demo); torch and scikit-learn are imported only when it runs.
"""


def run_probe(*args, **kwargs) -> dict:
    """Probe a pretrained run (jepa, and on request jepa_finetune) against random_init, raw_features,
    raw_gbdt (and scratch).

    run_probe(run_dir, data_dir, out_dir, checkpoint=None, encoder="target", hours=tasks.HOURS,
              device="cpu", batch_size=256, n_bootstrap=1000, seed=0, progress=True,
              methods=fit.DEFAULT_METHODS, label_fractions=None, repeats=5, finetune_settings=None,
              labels_dir=None, tasks=None, label_tasks=None) -> report dict
    Writes out_dir/report.json, report.md and PNG plots; see ehrjepa.probe.run.run_probe."""
    from ehrjepa.probe.run import run_probe as _run_probe

    return _run_probe(*args, **kwargs)
