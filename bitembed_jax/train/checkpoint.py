"""Orbax CheckpointManager for train state + data-iterator position + the run's config.

Saves are atomic (orbax finalises a step only when fully written), async, every
N steps and on demand (SIGTERM); the last K are kept. A work dir remembers its
config; resuming with a config that changes what is trained is refused, naming
the keys that differ.
"""
import base64
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bitembed_jax.config_loader import recorded_diff
from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import saved_steps

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"
# keys that may change between a run and its resumption: they don't change what is being trained
RESUMABLE_PREFIXES = ("train.num_steps", "train.log_every", "checkpoint.", "mesh.", "data.dataset_dir")
# keys added after work dirs existed, with the value that trains as before the key existed: a saved config
# without the key resumes when the key still has that value
ADDED_KEYS = {"train.quant_warmup_steps": 0, "data.max_negatives": -1, "data.validation_fraction": 0.0,
              "data.mode": "prepared", "data.shuffle_window": 10_000}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_dict(cfg) -> dict:
    return json.loads(cfg.to_json())


def check_or_write_config(workdir: str, cfg, *, is_writer: bool = True, allow_change=()) -> bool:
    """First run: store the config. Later runs: refuse when a training-relevant key differs, unless the earlier
    run saved neither a checkpoint nor a model (it failed at its start, e.g. on bad data): then nothing of it can
    be resumed or mixed, and the new config replaces its record. Returns whether it did.

    ``allow_change``: keys (or prefixes ending in '.') the operator explicitly lets differ (``--allow-change``,
    e.g. a lower learning rate for a diverged run); each change is recorded in WORKDIR/history.jsonl."""
    if paths.exists(workdir) and not epath.Path(workdir).is_dir():
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a folder")
    path = paths.join(workdir, CONFIG_FILE)
    current = config_dict(cfg)
    restarted, allowed = False, []
    if paths.exists(path):
        saved = json.loads(epath.Path(path).read_text())
        diff = recorded_diff(_flatten(saved), _flatten(current), added=ADDED_KEYS, resumable=RESUMABLE_PREFIXES)
        has_run = bool(saved_steps(workdir) or paths.exists(paths.join(workdir, "model")))
        allowed = [d for d in diff if _allowed(d[0], allow_change)] if has_run else []
        refused = [d for d in diff if d not in allowed]
        if refused and has_run:
            lines = [f"  {k}: saved {a!r} != now {b!r}" for k, a, b in refused]
            raise ValueError(f"{workdir} holds a run with a different config; refusing to resume (use a new "
                             f"--workdir, or name the keys that may change with --allow-change):\n"
                             + "\n".join(lines))
        restarted = bool(diff) and not has_run
    if is_writer:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        paths.write_text_atomic(path, json.dumps(current, indent=2, sort_keys=True))
        if allowed:
            record_history(workdir, {"event": "config_change", "from_step": (saved_steps(workdir) or [0])[-1],
                                     "changes": {k: [a, b] for k, a, b in allowed}})
    return restarted


def _allowed(key: str, allow_change) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allow_change)


def record_history(workdir: str, event: dict):
    """Append an operator's decision (a config change, a resume from an earlier checkpoint) to
    WORKDIR/history.jsonl, so the run's record says how its curves came to be."""
    import datetime

    row = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **event}
    target = paths.join(workdir, HISTORY_FILE)
    old = epath.Path(target).read_text() if paths.exists(target) else ""
    paths.write_text_atomic(target, old + json.dumps(row, sort_keys=True) + "\n")


def _encode_data_state(state):
    if isinstance(state, bytes):
        return {"__bytes_b64__": base64.b64encode(state).decode()}
    return state


def _decode_data_state(state):
    if isinstance(state, dict) and set(state) == {"__bytes_b64__"}:
        return base64.b64decode(state["__bytes_b64__"])
    return state


def tree_bytes(tree) -> int:
    """Bytes of an array tree (abstract or not), as a checkpoint stores it uncompressed."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def check_disk_room(workdir: str, abstract_state, ckpt_cfg, num_steps: int, start: int, saved: int):
    """Refuse to start a local run whose checkpoints and final model folder cannot fit on the work dir's disk.

    Without this a full disk ends the run at a later save, after hours of training. Orbax writes the new
    checkpoint before it deletes the oldest, so keep + 1 copies of the state exist at the peak; the ones
    already in the work dir (``saved`` of them) are rotated out.
    """
    if paths.is_remote(workdir):
        return
    every, keep = int(ckpt_cfg.every_steps), int(ckpt_cfg.keep)
    # orbax saves every ``every`` steps, the run's first step (none saved yet) and its last one (forced)
    future = num_steps // every - start // every + (0 if saved else 1) + (1 if num_steps % every else 0)
    per_copy = tree_bytes(abstract_state)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    # finished steps only: a half-written *.orbax-checkpoint-tmp folder left by a crash is not rotated out
    held = sum(folder_bytes(os.path.join(ckpt_dir, d)) for d in os.listdir(ckpt_dir) if d.isdigit()) \
        if os.path.isdir(ckpt_dir) else 0
    needed = max(0, min(keep + 1, saved + future) * per_copy - held) + tree_bytes(abstract_state["params"])
    free = shutil.disk_usage(workdir).free
    if needed > free:
        gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
        raise OSError(f"{workdir}: {gib(free)} free on its disk, but this run needs about {gib(needed)}: up to "
                      f"config.checkpoint.keep={keep} checkpoints of {gib(per_copy)} (params and optimizer "
                      f"state) plus the one being written, and the final model folder. Free some space, lower "
                      f"config.checkpoint.keep, or choose another --workdir.")


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed (now, or an earlier async save surfacing); the message names what survives."""


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_cfg.keep), save_interval_steps=int(ckpt_cfg.every_steps),
            enable_async_checkpointing=bool(ckpt_cfg.async_save), create=True)
        self.directory = paths.join(paths.absolute(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._started = None  # the step of the last save begun: an async save's failure surfaces when waited on

    def latest_step(self):
        return self.manager.latest_step()

    def num_saved(self) -> int:
        return len(self.manager.all_steps())

    def _failed(self, step: int | None, e: Exception) -> CheckpointSaveError:
        last = self.latest_step()
        survives = (f"The last complete checkpoint (step {last}) is intact; fix the cause and rerun the same "
                    f"command to resume from it." if last is not None else
                    "No checkpoint was completed; fix the cause and rerun the same command to start again.")
        return CheckpointSaveError(f"saving a checkpoint in {self.directory} failed at step {step}: {e}\n{survives}")

    def save(self, step: int, state, data_state, *, force: bool = False) -> bool:
        """``data_state``: the data iterator's position, or a function returning it, called only when this step
        is saved (a streaming iterator's state is a collective over the processes)."""
        if callable(data_state):
            if not (force or self.manager.should_save(step)):
                return False
            data_state = data_state()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(_encode_data_state(data_state)))
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._failed(step, e) from e
        if saved:
            self._started = step
        return saved

    def restore(self, step: int, abstract_state):
        """``abstract_state``: ShapeDtypeStructs with shardings (resharding to the current mesh is allowed)."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=ocp.args.JsonRestore()))
        return out["state"], _decode_data_state(out["data"])

    def wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(self._started, e) from e

    def close(self):
        """Finish the pending async save (its failure raises ``CheckpointSaveError``), then release the manager."""
        try:
            self.wait()
        finally:
            self.manager.close()

    def abandon(self):
        """Release without raising: for a run already stopping on another error, which must not be masked."""
        try:
            self.close()
        except Exception as e:  # the propagating error is the one the user must see; this one is logged
            logging.getLogger(__name__).error("%s", e)
