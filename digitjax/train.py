"""`python -m digitjax.train`: the flags, and a main that hands the config to the trainer.

    python -m digitjax.train                                  # experiments/default.py -> checkpoints/default
    python -m digitjax.train --config experiments/seed.py --workdir checkpoints/seed --config.num_epochs=3

Re-running a command resumes from the latest checkpoint in its workdir. SIGTERM (or
Ctrl-C) saves a checkpoint at the current step and stops. The training itself is
`digitjax/trainer.py`.

Every device of every process trains, data-parallel (digitjax/runs/parallel.py). Several hosts run the
same command, each with its process flags, or `--distributed` where JAX finds them itself
(a multi-host Cloud TPU slice, SLURM's srun, Open MPI's mpirun):

    python -m digitjax.train --coordinator_address host0:1234 --num_processes 2 --process_id 0
    srun --ntasks=2 python -m digitjax.train --distributed
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from digitjax import data, trainer
from digitjax.errors import UserError, exit_on_user_error
from digitjax.runs import orbax_internals, parallel

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(EXPERIMENTS / "default.py"), "Python file whose get_config() returns the run's ConfigDict."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default checkpoints/<config file name>.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_IDX_DIR = flags.DEFINE_string(
    "idx_dir",
    None,
    "Folder with a subfolder of IDX files per dataset, named for it (mnist/, fashion_mnist/, kmnist/); default "
    "$DIGITJAX_IDX_DIR. A dataset without one is downloaded by TFDS.",
)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, in a multi-host run (with --num_processes, --process_id)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run, one per host.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run, from 0.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    None,
    "Join a multi-host run whose processes JAX finds by itself (jax.distributed.initialize(): a multi-host Cloud TPU "
    "slice, SLURM, Open MPI's mpirun). Default: only with --coordinator_address or JAX_COORDINATOR_ADDRESS set; "
    "one process on a cluster node trains alone.",
)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config mistakes reported as one line instead of a traceback."""
    with exit_on_user_error():
        try:
            rest = flags.FLAGS(argv)
            _CONFIG.value.to_dict()  # a config file that failed to load raises only when read
            return rest
        except (AttributeError, KeyError) as e:
            # ml_collections: '\'nmu_epochs\'\nDid you mean "num_epochs" instead of "nmu_epochs"?'
            text = str(e).encode().decode("unicode_escape").replace("'", "").replace('"', "")
            field, _, hint = text.partition("\n")
            raise UserError(
                f"Unknown config field {field.strip()!r}. {hint.strip()} The fields and what they mean "
                f"are in experiments/default.py."
            )
        except flags.Error as e:
            raise UserError(f"{e}. See --helpfull for the flags.")
        except OSError as e:
            detail = str(e).splitlines()[-1].strip()
            raise UserError(
                f"Could not load the config file ({detail}). Pass --config with a Python file such as "
                f"experiments/default.py whose get_config() returns a ConfigDict."
            )


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = epath.Path(
        _WORKDIR.value or Path("checkpoints") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    )
    if not flags.FLAGS["verbosity"].present:
        # Quiet unless asked (--verbosity=0 shows all): Orbax logs every save at INFO and WARNING.
        logging.set_verbosity(logging.ERROR)
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    orbax_internals.quiet_failed_saves()
    # Compiled steps persist across runs (a resumed or repeated run skips compiling).
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path("~/.cache/digitjax/xla").expanduser()))
    jax.config.update("jax_compilation_cache_dir", cache)
    started = time.perf_counter()
    with exit_on_user_error():
        result = trainer.train_and_evaluate(_CONFIG.value, workdir, data.Paths(_DATA_DIR.value, _IDX_DIR.value))
    if "stopped_by" in result:
        sys.exit(130 if result["stopped_by"] == signal.SIGINT else 0)
    if not parallel.is_main():
        return
    if result:
        seconds = time.perf_counter() - started
        print(
            f"{workdir}: step {result['step']}, test accuracy {result['test_accuracy']:.4%} "
            f"(training {result['train_seconds']:.1f} s, compiling {result['compile_seconds'] or 0:.1f} s, "
            f"whole command {seconds:.0f} s)"
        )
    else:
        print(
            f"{workdir} has already finished its {_CONFIG.value.num_epochs} epochs; "
            f"evaluate it with `python -m digitjax.evaluate --workdir {workdir}`."
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
