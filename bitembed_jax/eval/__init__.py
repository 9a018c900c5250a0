"""Evaluation: ``local`` (BEIR retrieval / STS files, no network), ``mteb_wrapper`` (our Encoder as an
mteb model), ``report`` (results.json, summary.md, plot.png) and ``cli_eval`` (the ``eval`` command).
Nothing is imported here, so mteb loads only when it is used."""
