"""FastEmbed over an ONNX export folder: ``fastembed_model(D)`` is a ``fastembed.TextEmbedding``, loaded offline.

FastEmbed serves the models it knows by name; a local folder is a "custom model", registered once per process
(``TextEmbedding.add_custom_model``: dimension, pooling, normalisation, which output) and then loaded from
``specific_model_path`` (nothing is downloaded). It reads our ``sentence_embedding`` output, already pooled
(last-token or mean, as the model was trained) and L2-normalised, so its pooling is DISABLED and its vectors are
the graph's whatever the model's pooling. Its tokenizer is the exported tokenizer.json (which appends EOS for
last-token pooling), padded to the right and cut at tokenizer_config.json's ``model_max_length`` (the export's
max_length). FastEmbed adds no prompt (``query_embed`` is ``embed``): prepend the model's query prompt,
``read_onnx_export(D)["prompts"]["query"]``, to queries yourself.

fastembed is imported here only, on first use: the library does not depend on it.
"""
import os

from bitembed_jax.export.onnx_runtime import read_onnx_export

OUTPUT = "sentence_embedding"  # onnx_graph.OUTPUTS[1], without importing onnx


def fastembed_name(path: str) -> str:
    """The name ``fastembed_model`` registers ``path`` under: one per folder, so two exports never share one."""
    return "bitembed-jax" + os.path.abspath(path)


def register(path: str, name: str | None = None) -> str:
    """Register the export folder ``path`` with FastEmbed's TextEmbedding (once per process); returns its name."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    meta = read_onnx_export(path)
    name = name or fastembed_name(path)
    dim = int(meta["model"]["hidden_size"])
    model_file = meta["export"]["file"]
    known = {m["model"].lower(): m for m in TextEmbedding.list_supported_models()}
    if name.lower() in known:  # FastEmbed cannot forget a registration; the same folder may be loaded again
        if (known[name.lower()]["dim"], known[name.lower()]["model_file"]) != (dim, model_file):
            raise ValueError(f"FastEmbed already has a model {name!r} of another shape; pass another name=")
        return name
    data = model_file + "_data"  # external weights beside the graph, when the export has them
    TextEmbedding.add_custom_model(
        model=name, pooling=PoolingType.DISABLED, normalization=True, sources=ModelSource(hf=name), dim=dim,
        model_file=model_file, additional_files=[data] if os.path.exists(os.path.join(path, data)) else [],
        description=f"bitembed-jax ONNX export of {meta['model'].get('arch', 'a text embedder')}",
        output_name=OUTPUT)
    return name


def fastembed_model(path: str, *, name: str | None = None, **kwargs):
    """``fastembed.TextEmbedding`` over the ONNX export folder ``path``; ``kwargs`` go to TextEmbedding
    (threads, providers, cache_dir, ...)."""
    from fastembed import TextEmbedding

    return TextEmbedding(model_name=register(path, name), specific_model_path=path, **kwargs)
