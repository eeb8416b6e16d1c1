"""ehrjepa: JEPA pretraining of patient representations from ICU time series (MIMIC-IV)."""
from setuptools import find_packages, setup

setup(
    name="ehrjepa",
    version="0.1.0",
    description="Joint-Embedding Predictive Architecture pretraining on hourly MIMIC-IV ICU series",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is installed as ehrjepa.kernels so that no generic top-level `kernels` lands in
    # site-packages.
    # configs/ ships inside the package as ehrjepa/configs (data only), so that a wheel (not only
    # a checkout) has the feature catalog, the phenotypes and the training configs.
    packages=find_packages(include=["ehrjepa", "ehrjepa.*"]) + ["ehrjepa.kernels", "ehrjepa.configs"],
    package_dir={"ehrjepa": "ehrjepa", "ehrjepa.kernels": "kernels", "ehrjepa.configs": "configs"},
    package_data={"ehrjepa.configs": ["*.yaml", "tasks/*.yaml", "tasks/*.md", "sweeps/*.yaml"]},
    install_requires=[
        "torch>=2.5",
        # the kernels are the product: Triton wherever it has wheels; elsewhere the torch paths
        # run and the Triton tests skip
        'triton>=3.0; platform_system == "Linux" and platform_machine == "x86_64"',
        "numpy>=1.24",
        "numba>=0.59",
        "pyarrow>=14",
        "pyyaml>=6",
        "tqdm>=4.60",
        "isal>=1.6",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "optuna>=4",  # ehrjepa sweep
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "duckdb>=1.0", "polars>=1.0",
                "pandas>=2.0", "psutil>=5", "tensorboard>=2.14",
                "meds>=0.4,<0.5"],  # the MEDS schemas that test synth --format meds
        "gpu": [],  # kept so that `pip install -e ".[gpu]"` still works: Triton is a requirement now
        "tensorboard": ["tensorboard>=2.14"],
    },
    entry_points={"console_scripts": ["ehrjepa=ehrjepa.cli:main"]},
)
