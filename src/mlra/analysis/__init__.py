"""Analyses of the attention variants (translation equivariance)."""

from mlra.analysis.equivariance import (
    attention_logits,
    left_padding_demo,
    measure_variant,
    rope_order_counterexample,
    run_equivariance,
)

__all__ = [
    "attention_logits", "left_padding_demo", "measure_variant", "rope_order_counterexample",
    "run_equivariance",
]
