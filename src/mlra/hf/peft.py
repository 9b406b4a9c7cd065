"""LoRA (peft) on MLRA models, the latent up-projection ``wkv_b`` included.

``wkv_b`` is an :class:`~mlra.attention.latent.UpProjection`: one weight of shape (latent
heads, w, heads per group * 2 * head_dim) that every path reads by calling the module (the
expanded attention, the absorbed queries, W_UV). :class:`LoraUpProjection` is peft's own LoRA
for such a stacked 3-D weight (its ``ParamWrapper``: a rank-r update per latent head, applied
while the module is called, merged into the weight by ``merge_and_unload``), bound to the
module so that ``target_modules=["wkv_b", ...]`` selects it.

Importing :mod:`mlra.hf` makes every ``LoraConfig`` know the layer (peft's custom-module API,
``LoraConfig._register_custom_module``, applied to each new config), so a plain
``LoraConfig(task_type="CAUSAL_LM", target_modules=["wq_b", "wkv_b", "wo"])`` works.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig
from peft.tuners.lora.layer import ParamWrapper

from mlra.attention.latent import UpProjection


class LoraUpProjection(ParamWrapper):
    """LoRA on an :class:`UpProjection`'s weight (per latent head, as peft does for stacked
    expert weights). No dropout, DoRA or bias (peft's limits for stacked weights)."""

    def __init__(self, base_layer: Any, adapter_name: str, config: LoraConfig, **kwargs: Any):
        kwargs.pop("parameter_name", None)
        super().__init__(base_layer, adapter_name, parameter_name="weight", config=config,
                         **kwargs)

    def forward(self, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        """The (adapted) weight, as :meth:`UpProjection.forward` (``dtype`` optional)."""
        return super().forward(dtype, *args, **kwargs)


def register_lora(config: LoraConfig) -> LoraConfig:
    """Map :class:`UpProjection` to :class:`LoraUpProjection` in ``config`` (done for every new
    ``LoraConfig`` once :mod:`mlra.hf` is imported); returns ``config``."""
    config._register_custom_module({UpProjection: LoraUpProjection})
    return config


def _install() -> None:
    """Register the layer in every ``LoraConfig`` made from now on (idempotent)."""
    if getattr(LoraConfig, "_mlra_registered", False):
        return
    original = LoraConfig.__post_init__

    def __post_init__(self: LoraConfig, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        register_lora(self)

    LoraConfig.__post_init__ = __post_init__
    LoraConfig._mlra_registered = True


_install()
