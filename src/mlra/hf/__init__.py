"""Hugging Face integration (``pip install 'mlra[hf]'``).

Importing this package registers ``model_type="mlra"`` with ``AutoConfig`` and
``AutoModelForCausalLM``. Saved directories also load with ``trust_remote_code=True`` without
importing it first.

- :class:`MlraConfig`: a ``PretrainedConfig`` with every :class:`~mlra.config.ModelConfig` field;
- :class:`MlraForCausalLM`: ``PreTrainedModel`` + ``GenerationMixin`` around our model;
- :class:`MlraCache`: the compact decoding cache ``generate`` uses;
- :func:`export_hf`: write a model and its tokenizer as a transformers directory;
- :mod:`mlra.hf.peft`: LoRA on the latent up-projection ``wkv_b``.
"""

from __future__ import annotations

try:
    import transformers
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mlra.hf needs the optional packages of the hf extra: pip install 'mlra[hf]'"
    ) from exc

from packaging.version import Version

MIN_TRANSFORMERS = "5.24"
"""The oldest transformers the integration supports (the ``hf`` extra's lower bound): the
model outputs and cache interfaces of 4.x differ."""
if Version(transformers.__version__) < Version(MIN_TRANSFORMERS):  # pragma: no cover
    raise ImportError(
        f"mlra.hf needs transformers>={MIN_TRANSFORMERS},<6, found {transformers.__version__}: "
        "pip install 'mlra[hf]'")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from mlra.hf.cache import MlraCache, MlraLayerCache  # noqa: E402
from mlra.hf.config import MODEL_TYPE, MlraConfig  # noqa: E402
from mlra.hf.export import export_hf  # noqa: E402
from mlra.hf.modeling import MlraForCausalLM  # noqa: E402

try:  # LoRA on wkv_b for every LoraConfig (peft is part of the hf extra)
    import mlra.hf.peft  # noqa: F401
except ImportError:  # pragma: no cover - peft not installed
    pass

AutoConfig.register(MODEL_TYPE, MlraConfig, exist_ok=True)
AutoModelForCausalLM.register(MlraConfig, MlraForCausalLM, exist_ok=True)

__all__ = ["MlraCache", "MlraConfig", "MlraForCausalLM", "MlraLayerCache", "export_hf"]
