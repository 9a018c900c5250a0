"""Metrics sinks: metrics.jsonl and TensorBoard event files in the work dir, a console progress bar.

Only process 0 writes; other hosts get a writer that does nothing. A run resumed from the checkpoint of step S
runs the steps after S again: their rows from the interrupted run are dropped from metrics.jsonl, and the new
TensorBoard event file starts with a purge at step S + 1, which TensorBoard applies to the older files, so both
show each step once.
"""
import json
import os
import time

import jax
from etils import epath

from bitembed_jax.io import paths


UPLOAD_EVERY_S = 60.0


def drop_rows_after(jsonl: str, step: int):
    """Keep the rows of ``jsonl`` up to ``step`` (and none torn by a kill mid-line); rewritten atomically."""
    if not os.path.exists(jsonl):
        return
    kept, dropped = [], False
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            try:
                keep = json.loads(line)["step"] <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            dropped = dropped or not keep
    if dropped:
        paths.write_text_atomic(jsonl, "".join(kept))


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = self._jsonl = self._tb = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        jsonl = os.path.join(workdir, "metrics.jsonl")
        self._remote, self._uploaded = None, 0.0
        if paths.is_remote(workdir):
            # object stores have no append: keep a local file in the cache and upload it whole, at most every
            # UPLOAD_EVERY_S and at close; a resumed run continues the uploaded file
            self._remote, jsonl = paths.join(workdir, "metrics.jsonl"), paths.cache_path(jsonl, "runs")
            os.makedirs(os.path.dirname(jsonl), exist_ok=True)
            if paths.exists(self._remote):
                with open(jsonl, "wb") as f:
                    f.write(epath.Path(self._remote).read_bytes())
            elif os.path.exists(jsonl):
                os.remove(jsonl)  # left by an earlier run of the same path whose upload never happened
        self._local = jsonl
        drop_rows_after(jsonl, start_step)
        self._jsonl = open(jsonl, "a", buffering=1)
        tb_dir = paths.join(workdir, "tensorboard")
        # a fresh work dir has nothing to purge; any earlier event file may hold steps this run writes again
        purge = start_step + 1 if paths.exists(tb_dir) else None
        self._tb = SummaryWriter(tb_dir, purge_step=purge)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step":
                self._tb.add_scalar(k, v, step)
        self._bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row.get('accuracy', float('nan')):.3f}")
        if self._remote and time.monotonic() - self._uploaded > UPLOAD_EVERY_S:
            self._upload()

    def _upload(self):
        with open(self._local, "rb") as f:
            epath.Path(self._remote).write_bytes(f.read())
        self._uploaded = time.monotonic()

    def advance(self, n: int = 1):
        if self.enabled:
            self._bar.update(n)

    def message(self, text: str):
        if self.enabled:
            (self._bar.write if self._bar else print)(text)

    def close(self):
        if self.enabled:
            self._bar.close()
            self._jsonl.close()
            if self._remote:
                self._upload()
            self._tb.close()
