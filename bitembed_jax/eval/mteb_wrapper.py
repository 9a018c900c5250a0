"""Our ``Encoder`` as an mteb (2.x) model: instructions as Qwen3-Embedding uses them, and output at a
stored precision / Matryoshka dimension.

Instructions: queries and symmetric inputs (STS, classification, clustering: mteb passes no prompt
type) are prefixed with ``instruction_template`` filled with the task's instruction; documents are
encoded as they are. The instruction is the first found of: the user's ``prompts`` dict (keys as mteb
resolves them: "Task-query", "Task", "Type-query", "Type", "query"), the task's own prompt (e.g.
SciFact's "Given a scientific claim, retrieve documents that support or refute the claim"), mteb's
default for the task type (STS: "Retrieve semantically similar text."; the instructions Qwen3-Embedding
is evaluated with), the task's description.

Precision: vectors are encoded at fp32, quantized with ``encode_storage`` and dequantized with
``decode_storage``, so mteb scores what a store of that precision holds. Scoring is the dot product
(``quant.embedding.similarity``'s definition): fp32 vectors are unit length, binary ones too (+-1/sqrt(d),
dot = 1 - 2 hamming / d, ranked as Hamming), int ones score as their dequantized dot product.

With ``cache_fp32`` the fp32 vectors are kept until ``clear_cache``, so one task evaluated at several
precisions is encoded once; ``evaluate_mteb`` turns it on for several settings and clears between tasks.
"""
import hashlib
import os

import numpy as np
from mteb.abstasks.abstask import get_abstask_prompt
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from bitembed_jax.choices import PRECISIONS
from bitembed_jax.data.tokenize import DEFAULT_QUERY_TEMPLATE
from bitembed_jax.encode import Encoder
from bitembed_jax.eval.local import embed_texts
from bitembed_jax.io.model_dir import CONFIG_NAME
from bitembed_jax.quant.storage import bytes_per_vector, decode_storage, model_storage

MEAN = "mteb mean"  # the dataset name of the rows averaging all tasks

# the query format training uses, up to the query: "Instruct: {instruction}\nQuery: "
INSTRUCTION_TEMPLATE = DEFAULT_QUERY_TEMPLATE.format(instruction="{instruction}", query="")


class MTEBEncoder(AbsEncoder):
    def __init__(self, encoder, *, name: str, revision: str = "local", precision: str = "fp32",
                 dim: int | None = None, batch_size: int = 32, prompts: dict[str, str] | None = None,
                 instruction_template: str = INSTRUCTION_TEMPLATE, cache_fp32: bool = False):
        if "{instruction}" not in instruction_template:
            raise ValueError("instruction_template must contain '{instruction}'")
        self.encoder = encoder
        self.name = name if "/" in name else f"bitembed-jax/{name}"  # mteb wants organization/model
        self.revision = revision
        self.batch_size = batch_size
        self.prompts = dict(prompts or {})
        self.template = instruction_template
        self.cache_fp32 = cache_fp32
        self._cache: dict[str, np.ndarray] = {}
        self.set_output(precision, dim)

    @classmethod
    def from_pretrained(cls, model_dir: str, *, max_length: int | None = None, **kw) -> "MTEBEncoder":
        with open(os.path.join(model_dir, CONFIG_NAME), "rb") as f:  # identifies the weights' conversion/training
            revision = hashlib.sha1(f.read()).hexdigest()[:12]
        enc = Encoder.from_pretrained(model_dir, max_length=max_length)
        kw.setdefault("name", os.path.basename(os.path.normpath(model_dir)))
        return cls(enc, revision=revision, **kw)

    def set_output(self, precision: str, dim: int | None = None) -> None:
        """Precision and Matryoshka dimension of the vectors handed to mteb (results go to their own
        experiment folder, ``experiments/dim_D__precision_P``, unless fp32 at full size)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        full = self.encoder.cfg.hidden_size
        if dim is not None and not 1 <= dim <= full:
            raise ValueError(f"dim must be in 1..{full}, got {dim}")
        self.precision, self.dim = precision, dim

    @property
    def mteb_model_meta(self) -> ModelMeta:
        experiment = {k: v for k, v in (("precision", self.precision), ("dim", self.dim))
                      if v is not None and v != "fp32"}
        return ModelMeta(
            loader=None, name=self.name, revision=self.revision, release_date=None, languages=None,
            n_parameters=None, memory_usage_mb=None, max_tokens=self.encoder.max_length,
            embed_dim=self.dim or self.encoder.cfg.hidden_size, license=None, open_weights=None,
            public_training_code=None, public_training_data=None, framework=["JAX"], reference=None,
            similarity_fn_name=ScoringFunction.DOT_PRODUCT, use_instructions=True, training_datasets=None,
            experiment_kwargs=experiment or None)

    def instruction(self, task_metadata, prompt_type: PromptType | None) -> str:
        key = get_prompt_name(self.prompts, task_metadata, prompt_type)
        if key is not None:
            return self.prompts[key]
        own = task_metadata.prompt
        if isinstance(own, dict):
            own = own.get(prompt_type.value if prompt_type else PromptType.query.value)
        return own or get_abstask_prompt(task_metadata.name) or task_metadata.description or ""

    def prefix(self, task_metadata, prompt_type: PromptType | None) -> str:
        if prompt_type == PromptType.document:
            return ""
        instruction = self.instruction(task_metadata, prompt_type)
        return self.template.format(instruction=instruction) if instruction else ""

    def clear_cache(self) -> None:
        self._cache.clear()

    def _fp32(self, texts: list[str], prefix: str) -> np.ndarray:
        key = hashlib.sha1("\0".join([prefix, *texts]).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        vecs = embed_texts(self.encoder, texts, batch_size=self.batch_size, prompt=prefix)
        if self.cache_fp32:
            self._cache[key] = vecs
        return vecs

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        vecs = self._fp32(texts, self.prefix(task_metadata, prompt_type))
        if self.precision == "fp32" and self.dim is None:
            return vecs
        return decode_storage(model_storage(vecs, self.precision, self.encoder.meta, self.dim))


def resolve_tasks(benchmark: str | None = None, tasks=None) -> list:
    import mteb

    try:
        found = list(mteb.get_benchmark(benchmark).tasks) if benchmark else list(mteb.get_tasks(tasks=list(tasks)))
    except KeyError as e:
        raise ValueError(f"mteb does not know {e.args[0]}") from None
    if not found:
        raise ValueError(f"no mteb tasks selected (benchmark={benchmark!r}, tasks={tasks!r})")
    return found


def evaluate_mteb(model: MTEBEncoder, tasks, settings, output_dir: str) -> list[dict]:
    """Run mteb on ``tasks`` for each (precision, dim) in ``settings``, writing mteb's results folder
    under ``output_dir``; one row per task and setting, plus the mean over tasks per setting."""
    import mteb
    from mteb.abstasks.aggregated_task import AbsTaskAggregate

    cache = mteb.ResultCache(cache_path=output_dir)
    scales, cal = model.encoder.meta.get("embedding_scales", {}), model.encoder.calibration
    model.cache_fp32 = len(settings) > 1  # a single setting needs no second look at the vectors
    rows = []
    for task in tasks:
        preload = not isinstance(task, AbsTaskAggregate)  # an aggregate loads its sub-tasks itself
        try:
            if preload:  # once for all settings (mteb.evaluate leaves preloaded data alone)
                task.load_data()
            for precision, dim in settings:
                model.set_output(precision, dim)
                res = mteb.evaluate(model, task, cache=cache, overwrite_strategy="always", co2_tracker=False,
                                    show_progress_bar=False, encode_kwargs={"batch_size": model.batch_size})
                d = dim or model.encoder.cfg.hidden_size
                rows.append({"dataset": task.metadata.name, "metric": task.metadata.main_score,
                             "score": float(res.task_results[0].get_score()), "precision": precision, "dim": d,
                             "bytes_per_vector": bytes_per_vector(precision, d, per_vector_scale=(
                                 cal.scale(precision) if cal else scales.get(precision)) is None)})
        except ConnectionError as e:  # what datasets raises when the Hub cannot be reached
            raise ConnectionError(
                f"could not get the data of mteb task {task.metadata.name}: the Hugging Face Hub, where mteb's "
                f"datasets live, is not reachable (no network, or HF_HUB_OFFLINE=1 and the dataset not cached) "
                f"[{e}]. Run with network, or evaluate local files with --retrieval / --sts") from e
        finally:
            model.clear_cache()
            if preload and task.data_loaded:
                task.unload_data()
    for precision, dim in settings:
        d = dim or model.encoder.cfg.hidden_size
        same = [r for r in rows if (r["precision"], r["dim"]) == (precision, d)]
        rows.append({**same[0], "dataset": MEAN, "metric": f"main score, mean of {len(same)} tasks",
                     "score": float(np.mean([r["score"] for r in same]))})
    return rows
