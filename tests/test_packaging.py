"""What a wheel ships: every file of configs/ that the code or the docs point users at is in
setup.py's package_data (installed as ehrjepa/configs/), and kernels/ is ehrjepa.kernels."""
import ast
from fnmatch import fnmatch
from pathlib import Path

from ehrjepa.data.catalog import shipped_config

REPO = Path(__file__).resolve().parents[1]


def setup_kwargs():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def test_every_config_file_is_package_data():
    kwargs = setup_kwargs()
    package_dir = ast.literal_eval(kwargs["package_dir"])
    patterns = ast.literal_eval(kwargs["package_data"])["ehrjepa.configs"]
    assert package_dir["ehrjepa.configs"] == "configs" and package_dir["ehrjepa.kernels"] == "kernels"
    files = [p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*")
             if p.is_file() and p.suffix in (".yaml", ".md")]
    assert files
    left_out = [f for f in files if not any(fnmatch(f, pat) and f.count("/") == pat.count("/")
                                            for pat in patterns)]
    assert not left_out, f"configs/ files a wheel would not ship: {left_out}"


def test_shipped_config_finds_the_checkout_files():
    for name in ("features.yaml", "phenotypes.yaml", "micro.yaml"):
        assert shipped_config(name).is_file()
