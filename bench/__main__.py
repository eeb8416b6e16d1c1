"""`python -m bench NAME [args]`: run the benchmark module `bench.NAME`, which provides main(argv)."""
import importlib
import sys

BENCHMARKS = {
    "preprocess": "ehrjepa preprocess against DuckDB, polars and pandas (wall time, peak RSS; "
                  "--format physionet2019: on the challenge's archive)",
    "kernels": "Triton kernels against their torch references",
    "train_step": "JEPA train step throughput",
    "render": "rebuild the tables of bench/RESULTS.md from bench/results.csv",
    "digest": "hashes of synth, preprocess and training outputs (a refactor must not change them)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m bench {" + ",".join(BENCHMARKS) + "} [args]\n")
        for name, text in BENCHMARKS.items():
            print(f"  {name:<12} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown benchmark {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    name = argv[0]
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"bench.{name}":
            raise  # the module exists but something it imports does not: show the real error
        print(f"bench {name}: bench/{name}.py is not written yet in this checkout", file=sys.stderr)
        return 2
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
