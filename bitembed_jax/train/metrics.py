"""Metrics sinks: metrics.jsonl and TensorBoard event files in the work dir, a console progress bar.

Only process 0 writes; other hosts get a writer that does nothing.
"""
import json
import os

import jax

from bitembed_jax.io import paths


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = self._jsonl = self._tb = None
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        # object stores have no append: a remote workdir gets a local metrics.jsonl beside the process
        jsonl = "metrics.jsonl" if paths.is_remote(workdir) else os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(jsonl, "a", buffering=1)
        self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))
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
            self._tb.close()
