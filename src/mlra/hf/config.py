"""``MlraConfig``: a ``transformers`` configuration holding every :class:`ModelConfig` field.

The fields are taken from :class:`~mlra.config.ModelConfig` itself (names, types, defaults), so
the two never drift apart; the usual Hugging Face names (``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``max_position_embeddings``) are aliases of
ours through ``attribute_map``.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from transformers import PretrainedConfig

from mlra.config import ModelConfig

MODEL_TYPE = "mlra"
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
"""The :class:`ModelConfig` fields an :class:`MlraConfig` holds."""

AUTO_MAP = {
    "AutoConfig": "configuration_mlra.MlraConfig",
    "AutoModelForCausalLM": "modeling_mlra.MlraForCausalLM",
}
"""Where ``trust_remote_code`` finds the classes in a saved directory (:mod:`mlra.hf.remote`)."""


def _body(ns: dict[str, Any]) -> None:
    annotations: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        annotations[f.name] = f.type
        ns[f.name] = f.default
    # transformers-side defaults: tied head, the cache on, end-of-text ids set by the exporter
    annotations.update(tie_word_embeddings="bool", use_cache="bool")
    ns.update(tie_word_embeddings=True, use_cache=True)
    ns["__annotations__"] = annotations
    ns["model_type"] = MODEL_TYPE
    ns["attribute_map"] = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "rms_norm_eps": "norm_eps",
        "initializer_range": "init_std",
    }
    ns["__doc__"] = (
        "Configuration of an MLRA-family model for ``transformers``: every field of "
        ":class:`mlra.config.ModelConfig` (``attention``, ``n_heads``, ``kv_lora_rank``, "
        "``latent_branches`` ...), validated by it, plus ``tie_word_embeddings`` and "
        "``use_cache``. Build one from a model config with :meth:`from_model_config`."
    )
    ns["__module__"] = __name__


_MlraConfigBase = types.new_class("_MlraConfigBase", (PretrainedConfig,), exec_body=_body)


class MlraConfig(_MlraConfigBase):  # type: ignore[misc, valid-type]
    __doc__ = _MlraConfigBase.__doc__
    model_type = MODEL_TYPE

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(AUTO_MAP)
        self.to_model_config()  # a clear ConfigError for an invalid combination, now

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> MlraConfig:
        """The transformers config of a model built from ``cfg`` (``kwargs``: e.g. token ids)."""
        return cls(**cfg.to_dict(), **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The :class:`ModelConfig` these fields describe."""
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})
