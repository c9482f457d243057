"""A run's recorded wall time (``results.json``'s ``wall_seconds_at_rows``) extrapolated to more
training epochs: experiments/end_to_end.py's arithmetic, free of its flags so that tests import
it."""

from __future__ import annotations

import numpy as np

# Stages before the step the remaining stages run: a strategy with a teacher compiles its
# distillation step in the second.
_WARM_STAGES = 2


def checkpoint_saves(stage_steps: list[int], every: int) -> int:
    """Checkpoints a run saves: step 0's, one at every stage's end, and one every ``every`` global
    steps except at a stage's last step (``train.Run``)."""
    saves, start = 1 + len(stage_steps), 0
    for steps in stage_steps:
        end = start + steps
        saves += (end - 1) // every - start // every  # multiples of every in (start, end)
        start = end
    return saves


def extrapolate(
    at_rows: dict[str, dict[str, float]],
    *,
    epochs: int,
    target_epochs: int,
    saves: int,
    target_saves: int,
) -> dict[str, dict[str, float]]:
    """The measured and extrapolated seconds of a run.

    Args:
      at_rows: {row: {'training', 'training_waiting_for_device', 'evaluation', 'checkpointing'}},
        cumulative seconds when each row was recorded (row 0: the random network; the last: after
        the last stage's evaluation, before the run's last checkpoint).
      epochs: training epochs per task of the measured run.
      target_epochs: epochs per task to extrapolate to.
      saves: checkpoints the measured run saved before its last row was recorded.
      target_saves: checkpoints a run of ``target_epochs`` saves in all.

    Returns:
      {'measured', 'extrapolated'}: seconds of 'training', 'rest' (the training time that does not
      scale with the epochs: compilation, end-of-task work), 'evaluation', 'checkpointing' and
      'total'; 'measured' also has 'seconds_per_epoch' (one task's epoch, the mean over the
      steady stages) and 'host_share' (the share of the steady stages' training that the host
      spent on its own work rather than waiting for the device).
    """
    rows = sorted(at_rows, key=int)
    stages = len(rows) - 1
    if stages <= _WARM_STAGES:
        raise ValueError(
            f"{stages} stages; the training time of an epoch needs stages after the first "
            f"{_WARM_STAGES} (which compile the steps): use a scenario of 3 or more tasks"
        )
    training = [at_rows[r]["training"] for r in rows]
    waiting = [at_rows[r]["training_waiting_for_device"] for r in rows]
    steady = np.diff(training)[_WARM_STAGES:]  # stages 3 onward
    per_epoch = float(np.mean(steady)) / epochs
    host_share = 1.0 - float(np.sum(np.diff(waiting)[_WARM_STAGES:]) / np.sum(steady))
    last = at_rows[rows[-1]]
    rest = last["training"] - stages * epochs * per_epoch
    per_save = last["checkpointing"] / saves
    measured = {
        "training": last["training"],
        "rest": rest,
        "evaluation": last["evaluation"],
        "checkpointing": last["checkpointing"],
        "seconds_per_epoch": per_epoch,
        "host_share": host_share,
    }
    extrapolated = {
        "training": rest + stages * target_epochs * per_epoch,
        "rest": rest,
        "evaluation": last["evaluation"],
        "checkpointing": per_save * target_saves,
    }
    for times in (measured, extrapolated):
        times["total"] = times["training"] + times["evaluation"] + times["checkpointing"]
    return {"measured": measured, "extrapolated": extrapolated}
