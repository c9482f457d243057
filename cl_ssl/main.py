"""Command-line entry point: ``python -m cl_ssl.main --config=configs/cifar100.py --workdir=DIR``.

Without ``--config`` the run is the built-in demo, ``configs/fashion_mnist.py`` as installed with
the package (``cl_ssl.configs``), so the command works from any directory. Any config value can be
overridden on the command line, e.g. ``--config.strategy=offline``.
On a multi-host system (Cloud TPU pods, GPU clusters) pass ``--multihost`` so that every process
joins the same run through ``jax.distributed.initialize()``; ``--coordinator_address``,
``--num_processes`` and ``--process_id`` set what it cannot detect (several processes on one
machine, clusters without SLURM).
"""

from __future__ import annotations

import importlib.resources
import os
import sys
import traceback

import jax
import numpy as np

try:
    from absl import app, flags, logging
    from ml_collections import config_flags

    from cl_ssl import storage, train
    from cl_ssl.evaluation import report
except ModuleNotFoundError as _missing:
    # The plain install (pip install cl_ssl) is the loss library, JAX and NumPy only; the command
    # line's training stack is the `train` extra.
    if __name__ != "__main__" or (_missing.name or "").partition(".")[0] == "cl_ssl":
        raise
    sys.exit(
        f"error: python -m cl_ssl.main needs the training stack, which the plain install of "
        f"cl_ssl (the loss library) leaves out: {_missing}. Install the train extra: "
        f"pip install 'cl_ssl[train]' (from a checkout: pip install '.[train]')"
    )

_DEMO_CONFIG = importlib.resources.files("cl_ssl.configs") / "fashion_mnist.py"


def _config_error(error: Exception) -> str:
    """One line for a --config that cannot be used: ml_collections' last line (the failing path
    and errno, or the closest field name) without its stack of wrappers."""
    text = str(error.args[0] if error.args else error).strip()
    if isinstance(error, OSError):
        return f"error: cannot load --config: {text.splitlines()[-1].strip()}"
    return f"error: bad --config override ({' '.join(text.splitlines())})"


try:
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        str(_DEMO_CONFIG),
        "Path of the run's config file, optionally with ':ARG' for its get_config(ARG); the "
        "default is the installed demo config (configs/fashion_mnist.py).",
        lock_config=True,
    )
except (KeyError, AttributeError, OSError) as _error:
    # ml_collections applies the --config.* overrides of sys.argv as the flag is defined: an
    # unknown field fails here (with the closest name), and so does a config file that does not
    # load when overrides follow it.
    if __name__ != "__main__":
        raise
    sys.exit(_config_error(_error))
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/default", "Folder of checkpoints and results; a run resumes from it."
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() before touching devices."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "With --multihost: host:port of process 0's coordinator (default: detected on TPU pods and "
    "SLURM).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --multihost: the number of processes of the run."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --multihost: this process's index, 0 to num_processes - 1."
)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or ``--config`` value (a field that does not exist, a
    value of the wrong type) reported in one line that names it, instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error: {error}\nPass --help for the flags.")
    except (KeyError, AttributeError, TypeError, ValueError, OSError) as error:
        sys.exit(_config_error(error))


def _resume_hint(workdir: str) -> str:
    folder = storage.path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    if not steps:
        return "no checkpoint was saved yet"
    return f"rerun the same command to resume from checkpoint {max(steps)} in {folder}"


def _exit(code: int, message: str) -> None:
    """Prints ``message`` and ends the process now: a failed asynchronous checkpoint save can leave
    threads that would keep the interpreter from exiting."""
    if message:
        print(message, file=sys.stderr, flush=True)
    logging.flush()
    sys.stdout.flush()
    os._exit(code)


_PROCESS_FLAGS = ("coordinator_address", "num_processes", "process_id")


def main(argv):
    del argv
    verbose = flags.FLAGS["verbosity"].present
    if not verbose:
        # orbax reports every checkpoint operation at INFO; keep the console to the progress bar
        # and the results unless --verbosity asks for more.
        logging.set_verbosity(logging.WARNING)
    if _MULTIHOST.value:
        # Collectives between the CPU devices of several processes (a run on CPU machines, or
        # several processes on one); accelerators use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif any(f.present for f in (flags.FLAGS[n] for n in _PROCESS_FLAGS)):
        _exit(1, f"error: --{', --'.join(_PROCESS_FLAGS)} need --multihost")
    try:
        config = _CONFIG.value
        config.to_dict()  # a config file that failed to load raises here
    except OSError as error:
        _exit(1, _config_error(error))
    try:
        result = train.run(config, _WORKDIR.value)
    except KeyboardInterrupt:
        _exit(130, f"interrupted; {_resume_hint(_WORKDIR.value)}")
    except (ValueError, RuntimeError, FloatingPointError, FileNotFoundError) as error:
        # What to change is in the message; the traceback only with --verbosity.
        if verbose:
            traceback.print_exc()
        _exit(1, f"error: {error}")
    except BaseException:
        traceback.print_exc()
        _exit(1, f"error: the run failed (traceback above); {_resume_hint(_WORKDIR.value)}")
    if result["preempted"] is not None:  # the checkpoint to resume from is named above
        if _MULTIHOST.value:
            # The processes leave together (the shutdown's barrier): process 0 holds the
            # coordination service, whose end aborts a process still finishing its checkpoint.
            jax.distributed.shutdown()
        _exit(128 + result["preempted"], "")
    if jax.process_index() == 0 and not result["stopped"]:
        runs = result.get("replicas", [{**result, "seed": None, "workdir": _WORKDIR.value}])
        for run in runs:
            seed = "" if run["seed"] is None else f", seed {run['seed']}"
            for name, matrix in run["matrices"].items():
                title = f"{name} accuracy (%){seed}"
                print(report.format_matrix(np.asarray(matrix), title=title))
                for metric, value in run["summaries"].get(name, {}).items():
                    if isinstance(value, float):
                        print(f"  {metric}: {value:.2f}")
            print(f"results: {run['workdir']}/results.md")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
