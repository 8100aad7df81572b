"""A recipe over several seeds: mean and spread of test accuracy, training time and time to 99.0/99.5%.

    python -m experiments.seeds --config experiments/fast.py --seeds 5    # -> checkpoints/fast-seeds/
    python -m experiments.seeds --config experiments/best.py --seeds 5

Each seed trains into its own workdir (re-running resumes or skips finished seeds) through the
trainer itself, tested ten times an epoch unless the config says how often (`eval_every_steps`);
times are the trainer's training wall time (compiling, evaluating and saving excluded) at the
first test evaluation that reached the target.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from absl import logging


def summarize(workdir: Path) -> dict:
    from digitjax.runs.metrics import TARGETS, read, time_to

    records = read(workdir)
    tests = [r for r in records if r["split"] == "test"]
    last = tests[-1]
    out = {"workdir": str(workdir), "test_accuracy": last["accuracy"], "train_seconds": last["train_seconds"]}
    return out | {f"seconds_to_{t:.1%}": time_to(records, t) for t in TARGETS}


def main() -> None:
    from digitjax import trainer
    from digitjax.errors import exit_on_user_error
    from digitjax.runs.metrics import TARGETS
    from digitjax.tools import bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe file, e.g. experiments/fast.py")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workdir", help="default checkpoints/<config name>-seeds")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides (Python)")
    args = parser.parse_args()
    logging.set_verbosity(logging.ERROR)
    config = bench.load_config(args.config)
    for item in args.set:
        field, value = item.split("=", 1)
        config[field] = type(config[field])(eval(value))
    config = bench.with_frequent_evals(config)
    root = Path(args.workdir or Path("checkpoints") / f"{Path(args.config).stem}-seeds")
    rows = []
    with exit_on_user_error():
        for seed in range(args.seeds):
            config.seed = seed
            before = bench.cpu_times()
            result = trainer.train_and_evaluate(config, root / f"seed{seed}")
            row = {"seed": seed, **summarize(root / f"seed{seed}"), "compile_seconds": result.get("compile_seconds")}
            row["cpu_steal"] = bench.steal_share(before, bench.cpu_times())
            print(json.dumps(row), flush=True)
            rows.append(row)
    accs = [r["test_accuracy"] for r in rows]
    secs = [r["train_seconds"] for r in rows]
    compiles = [r["compile_seconds"] for r in rows if r["compile_seconds"] is not None]
    summary = {
        "config": args.config,
        "overrides": args.set,
        "seeds": len(rows),
        "mean_test_accuracy": statistics.mean(accs),
        "std_test_accuracy": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "min_test_accuracy": min(accs),
        "mean_train_seconds": statistics.mean(secs),
        "max_train_seconds": max(secs),
        "mean_compile_seconds": statistics.mean(compiles) if compiles else None,
        "eval_every_steps": config.eval_every_steps,
        "machine": bench.machine(),
        "device_kind": bench.jax.devices()[0].device_kind,
        "jax": bench.jax.__version__,
        "runs": rows,
    }
    (root / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'seed':>4} {'test acc':>9} {'train s':>8} {'compile s':>10} {'to 99.0%':>9} {'to 99.5%':>9} {'steal':>6}")
    for r in rows:
        t1, t2 = (r[f"seconds_to_{t:.1%}"] for t in TARGETS)
        compile_s = "-" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        steal = "-" if r["cpu_steal"] is None else f"{r['cpu_steal']:.0%}"
        print(
            f"{r['seed']:>4} {r['test_accuracy']:>9.2%} {r['train_seconds']:>8.1f} {compile_s:>10} "
            f"{'-' if t1 is None else f'{t1:.1f}':>9} {'-' if t2 is None else f'{t2:.1f}':>9} "
            f"{steal:>6}"
        )
    print(
        f"mean {summary['mean_test_accuracy']:.2%} +- {summary['std_test_accuracy']:.2%} (min {min(accs):.2%}); "
        f"training {summary['mean_train_seconds']:.1f} s mean, {max(secs):.1f} s max; tested every "
        f"{config.eval_every_steps} steps; on {summary['machine']}; summary in {root / 'seeds.json'}"
    )


if __name__ == "__main__":
    main()
