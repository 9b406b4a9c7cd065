"""Evaluation: perplexity over token shards and the lm-evaluation-harness adapter.

The harness adapter lives in :mod:`mlra.evaluate.harness` and needs the optional extra
``eval`` (``pip install 'mlra[eval]'``); it is imported only when used.
"""

from mlra.evaluate.perplexity import (
    PerplexityResult,
    evaluate_shards,
    format_table,
    num_windows,
    perplexity,
)

__all__ = ["PerplexityResult", "evaluate_shards", "format_table", "num_windows", "perplexity"]
