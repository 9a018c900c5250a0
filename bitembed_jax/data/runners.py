"""Run a build's per-chunk jobs: in this process (``LocalRunner``), or as an Apache Beam pipeline
(``BeamRunner``: the DirectRunner on N local processes, or Dataflow, Flink, Spark with their options).

Both run two passes over the same tasks (each with an ``index``): ``first`` on each, then ``plan`` once on all
of ``first``'s results (a {index: task} of ``second``'s tasks), then ``second`` on the planned ones. They return
both passes' results (dicts with an ``"index"``) sorted by index, so the caller never depends on the order in
which workers finished. On Beam both passes are one pipeline: its workers start once.
"""
import json
import logging
from typing import Callable, Sequence

from etils import epath
from tqdm import tqdm

from bitembed_jax.io import paths

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


class LocalRunner:
    """One process, no Beam: the trainer's own build of a run's dataset (small enough to need no cluster)."""

    def __init__(self, progress_delay_s: float = 2.0):
        self.progress_delay_s = progress_delay_s

    def _map(self, fn: Callable[[object], dict], tasks: Sequence, desc: str) -> list[dict]:
        bar = tqdm(tasks, delay=self.progress_delay_s, desc=desc, unit=" chunks", leave=False)
        return sorted((fn(t) for t in bar), key=lambda r: r["index"])

    def two_passes(self, first: Callable, tasks: Sequence, plan: Callable, second: Callable, work_dir: str,
                   descs: tuple[str, str]) -> tuple[list[dict], list[dict]]:
        del work_dir  # results stay in memory
        first_results = self._map(first, tasks, descs[0])
        planned = plan(first_results)
        return first_results, self._map(second, [planned[k] for k in sorted(planned)], descs[1])


def _run_and_save(task, fn, work_dir: str) -> dict:
    """Runs on a Beam worker: the result goes to a small file under the build's scratch folder, which the
    launching process reads back (a retried task rewrites the same file)."""
    result = fn(task)
    (epath.Path(work_dir) / f"{result['index']:08d}.json").write_text(json.dumps(result))
    return result


def _run_planned(task, planned: dict, fn, work_dir: str):
    """The second pass on a Beam worker: the task ``plan`` made of this chunk, if any."""
    if task.index in planned:
        _run_and_save(planned[task.index], fn, work_dir)


def _plan_all(results: list, plan) -> dict:
    """On a worker: a plan that raises (a bad record) writes nothing; the launching process raises it."""
    try:
        return plan(sorted(results, key=lambda r: r["index"]))
    except Exception:  # noqa: BLE001 - raised again, whatever it is, where plan runs after the pipeline
        return {}


def _read_results(work_dir: str) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(epath.Path(work_dir).glob("*.json"))]


def _import_beam():
    """apache_beam, without the warning its import logs about Google Cloud clients a local run never uses."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam
    finally:
        root.setLevel(level)
    # the local job service echoes every worker warning about options a DirectRunner run does not use
    for name in ("apache_beam.runners.portability.local_job_service", "apache_beam.options.pipeline_options"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return apache_beam


class BeamRunner:
    def __init__(self, runner: str = "DirectRunner", workers: int = 1, options: dict | None = None):
        if runner not in RUNNERS:
            raise ValueError(f"--runner {runner}: expected one of {', '.join(RUNNERS)}")
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if workers > 1 and runner != "DirectRunner":
            raise ValueError(f"--workers sets the DirectRunner's processes; size {runner} with its own "
                             "--beam-option (e.g. num_workers=N on Dataflow)")
        self.runner, self.workers, self.options = runner, workers, dict(options or {})

    def pipeline_options(self):
        from apache_beam.options.pipeline_options import PipelineOptions

        opts = {"runner": self.runner, **self.options}
        if self.runner == "DirectRunner":
            # several processes are a real parallel run; one runs in this process, without the gRPC hop
            opts.setdefault("direct_num_workers", self.workers)
            opts.setdefault("direct_running_mode", "multi_processing" if self.workers > 1 else "in_memory")
            opts.setdefault("default_sdk_harness_log_level", "WARNING")  # the local workers' INFO is noise
        return PipelineOptions([f"--{k}={v}" for k, v in opts.items()])

    def beam_runner(self):
        """The runner object: for DirectRunner, Beam's FnApiRunner itself (what DirectRunner runs a batch
        pipeline on). DirectRunner would first try the Prism runner, which downloads a binary from GitHub at run
        time; offline that fails and left an empty /tmp/beam-temp* folder per pipeline."""
        if self.runner != "DirectRunner":
            return self.runner
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()

    def two_passes(self, first: Callable, tasks: Sequence, plan: Callable, second: Callable, work_dir: str,
                   descs: tuple[str, str]) -> tuple[list[dict], list[dict]]:
        """``plan`` runs on a worker too (its result is the second pass's side input); the launching process
        calls it again on the results it reads back, so a plan that raises raises here, after the pipeline."""
        beam = _import_beam()
        dirs = [paths.join(work_dir, d) for d in descs]
        for d in dirs:
            epath.Path(d).mkdir(parents=True, exist_ok=True)
        with beam.Pipeline(runner=self.beam_runner(), options=self.pipeline_options()) as p:
            chunks = (p | "tasks" >> beam.Create(list(tasks), reshuffle=False)
                      | "spread over workers" >> beam.Reshuffle())
            planned = (chunks | descs[0] >> beam.Map(_run_and_save, first, dirs[0])
                       | "gather" >> beam.combiners.ToList() | "plan" >> beam.Map(_plan_all, plan))
            _ = chunks | descs[1] >> beam.Map(_run_planned, beam.pvalue.AsSingleton(planned), second, dirs[1])
        first_results = _read_results(dirs[0])
        if len(first_results) != len(tasks):
            raise RuntimeError(f"the Beam pipeline '{descs[0]}' returned {len(first_results)} results for "
                               f"{len(tasks)} tasks")
        planned = plan(first_results)
        second_results = _read_results(dirs[1])
        if len(second_results) != len(planned):
            raise RuntimeError(f"the Beam pipeline '{descs[1]}' returned {len(second_results)} results for "
                               f"{len(planned)} tasks")
        return first_results, second_results
