"""Resuming a run: from which checkpoint, whether it is sound, and an operator's explicit choice of an earlier
one (``--resume-from``) after a diverged run."""
import os
import shutil
import time

import jax

from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import saved_steps
from bitembed_jax.train.checkpoint import record_history
from bitembed_jax.train.finite import all_finite


def resume_hint(workdir: str) -> str:
    """What a stopped run resumes from, for messages (a listing only: safe from any thread)."""
    try:
        steps = saved_steps(workdir)
    except OSError:
        return ""
    if not steps:
        return "No checkpoint was completed: rerun the same command on every process to start again."
    return (f"The last complete checkpoint is step {steps[-1]} in {paths.join(workdir, 'checkpoints')}: rerun the "
            f"same command on every process to resume from it.")


def check_finite_state(state: dict, step: int, workdir: str):
    """A restored checkpoint must hold finite parameters; one saved by a diverged run (before the loop refused
    to save those) is named with the earlier checkpoints to resume from instead."""
    if bool(jax.jit(all_finite)(state["params"])):
        return
    earlier = [s for s in saved_steps(workdir) if s < step]
    choice = (f"resume from an earlier one with --resume-from STEP (saved: {earlier})" if earlier else
              "no earlier checkpoint is left: start again in a new --workdir")
    raise ValueError(f"checkpoint step {step} in {paths.join(workdir, 'checkpoints')} holds non-finite parameters "
                     f"(saved by a diverged run); {choice}")


def set_aside_later_checkpoints(workdir: str, step: int):
    """``--resume-from STEP``: the checkpoints after STEP belong to the abandoned trajectory. They are moved to
    WORKDIR/abandoned/<time>/ (nothing is deleted), so the run continues from STEP, and the choice is recorded
    in history.jsonl."""
    if paths.is_remote(workdir):
        raise ValueError("--resume-from needs a local work dir (move the later checkpoints aside by hand on a "
                         "bucket: gsutil mv)")
    steps = saved_steps(workdir)
    if step not in steps:
        raise ValueError(f"--resume-from {step}: {workdir} has no complete checkpoint at that step "
                         f"(saved: {steps or 'none'})")
    later = [s for s in steps if s > step]
    if not later:
        return
    aside = os.path.join(workdir, "abandoned", time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
    os.makedirs(aside, exist_ok=True)
    for s in later:
        shutil.move(os.path.join(workdir, "checkpoints", str(s)), os.path.join(aside, str(s)))
    record_history(workdir, {"event": "resume_from", "step": step, "set_aside": later, "to": aside})
    print(f"--resume-from {step}: moved the later checkpoints {later} to {aside}")
