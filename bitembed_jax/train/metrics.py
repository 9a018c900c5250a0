"""Metrics sinks: metrics.jsonl and TensorBoard event files in the work dir, a console progress bar.

Only process 0 writes; other hosts get a writer that does nothing.
"""
import json
import os
import time

import jax
from etils import epath

from bitembed_jax.io import paths


UPLOAD_EVERY_S = 60.0


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
