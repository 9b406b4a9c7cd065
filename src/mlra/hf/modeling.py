"""``MlraForCausalLM``: every mlra model as a ``transformers`` causal LM.

A ``PreTrainedModel`` + ``GenerationMixin`` around :class:`~mlra.model.Transformer` (weights
under ``model.``): ``save_pretrained`` / ``from_pretrained`` (``dtype=``, ``device_map=``),
``generate`` (transformers' own: greedy, sampling, beam search, logits processors, streamers),
``pipeline("text-generation")`` and peft. Decoding reads an :class:`~mlra.hf.cache.MlraCache`
of each layer's compact state; the latent family attends in the absorbed form (queries mapped
into latent space, no per-head K/V formed), as :mod:`mlra.decoding` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from mlra.hf.cache import MlraCache
from mlra.hf.config import MlraConfig
from mlra.loss import IGNORE_INDEX, token_cross_entropy
from mlra.model import AttentionContext, Block, Transformer

# Keyword arguments transformers passes that need nothing from us.
_ACCEPTED = frozenset({"return_dict", "cache_position", "num_items_in_batch"})
_UNSUPPORTED_CACHES = "only MlraCache (made by generate) or no cache"


class MlraForCausalLM(PreTrainedModel, GenerationMixin):
    """An mlra :class:`~mlra.model.Transformer` with the transformers causal-LM interface.

    ``forward(input_ids, attention_mask=None, position_ids=None, cache=None, labels=None,
    use_cache=None, logits_to_keep=0)``: padding on either side is masked; positions count real
    tokens. Unsupported options (``output_attentions``, ``output_hidden_states``, caches other
    than :class:`MlraCache`, unknown keyword arguments) raise ``ValueError``.
    """

    config_class = MlraConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = False

    def __init__(self, config: MlraConfig) -> None:
        super().__init__(config)
        self.model = Transformer(config.to_model_config())
        self.post_init()

    @classmethod
    def from_model(cls, model: Transformer, **config_kwargs: Any) -> MlraForCausalLM:
        """Wrap an existing model (its weights are shared, not copied); ``config_kwargs`` go to
        the config (e.g. ``eos_token_id``)."""
        config = MlraConfig.from_model_config(model.config, **config_kwargs)
        with torch.device("meta"):
            lm = cls(config)
        lm.model = model
        return lm.to(next(model.parameters()).dtype)

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, Transformer):
            module.reset_parameters()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> None:
        """None: the output head always reads the input embedding (tied by construction)."""
        return None

    # -- saving ------------------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Keys as transformers addresses parameters, by module path: the latent up-projection
        under ``model.layers.N.attn.wkv_b.weight`` (mlra's own files name it
        ``layers.N.attn.wkv_b``; the module's state-dict hook, undone here)."""
        state = super().state_dict(*args, **kwargs)
        return type(state)(
            (k + ".weight" if k.endswith(".attn.wkv_b") else k, v) for k, v in state.items()
        )

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """transformers' ``save_pretrained``, plus the two small modules ``auto_map`` names, so
        ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads the
        directory on any machine with mlra installed."""
        from mlra.hf.remote import write_remote_code

        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MlraCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: MlraCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits (and the mean next-token loss with ``labels``: shifted here; -100, padded
        targets and targets predicted from padding are ignored). With a ``cache`` (or
        ``use_cache=True``) the new tokens' state is appended to it and attention reads the
        cached tokens too; the output carries it."""
        unknown = sorted(k for k, v in kwargs.items() if k not in _ACCEPTED and v is not None)
        if unknown:
            raise ValueError(f"MlraForCausalLM.forward got unsupported argument(s) {unknown}")
        if output_attentions:
            raise ValueError("output_attentions is not supported by MlraForCausalLM (the "
                             "attention runs fused; no attention weights are formed)")
        if output_hidden_states:
            raise ValueError("output_hidden_states is not supported by MlraForCausalLM")
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache once, as cache= (past_key_values is its old name)")
            cache = past_key_values
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by MlraForCausalLM; pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if cache is not None and not isinstance(cache, MlraCache):
            raise ValueError(f"MlraForCausalLM uses {_UNSUPPORTED_CACHES}, got "
                             f"{type(cache).__name__}")
        if cache is None and use_cache:
            cache = MlraCache(self.config.n_layers)
        if attention_mask is not None:
            attention_mask = attention_mask.to(input_ids.device)
            if attention_mask.dim() != 2:
                raise ValueError("attention_mask must be [batch, time] (1 = token, 0 = padding)")
        if cache is None:
            hidden = self.model.hidden_states(input_ids, attention_mask, position_ids)
        else:
            hidden = self._cached(input_ids, cache, attention_mask, position_ids)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.logits(hidden)
        loss = None
        if labels is not None:
            loss = self._loss(logits, labels, attention_mask, logits_to_keep)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _loss(self, logits, labels, attention_mask, logits_to_keep) -> torch.Tensor:
        if logits_to_keep:
            raise ValueError("labels need the logits of every position (logits_to_keep=0)")
        targets = labels.to(logits.device)[:, 1:]
        if attention_mask is not None:  # no target at padding, none predicted from padding
            pad = (attention_mask[:, 1:] == 0) | (attention_mask[:, :-1] == 0)
            targets = targets.masked_fill(pad, IGNORE_INDEX)
        return token_cross_entropy(logits[:, :-1], targets, ignore_index=IGNORE_INDEX)

    def _cached(self, input_ids, cache: MlraCache, attention_mask, position_ids) -> torch.Tensor:
        """Append the new tokens' compact state to ``cache`` and attend over the whole of it:
        the expanded (training) form for a first prompt, the absorbed form (latent family)
        once tokens are cached, as mlra's own prefill and paged decode do."""
        B, T = input_ids.shape
        past = cache.get_seq_length()
        S = past + T
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; with "
                             f"{past} cached tokens it must be ({B}, {S})")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, S, device=input_ids.device).expand(B, T)
        mask = _cache_mask(attention_mask, B, T, past, input_ids.device)
        return self.model.run(input_ids, position_ids, CacheContext(cache, mask, absorbed=past > 0))

    # -- generation --------------------------------------------------------------------------
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Every generation decodes from an :class:`MlraCache` (a user-given one is kept)."""
        user = model_kwargs.get("cache")
        if user is None and model_kwargs.get("past_key_values") is not None:
            user = model_kwargs.pop("past_key_values")
            model_kwargs["cache"] = user
        if user is not None:
            if not isinstance(user, MlraCache):
                raise ValueError(f"MlraForCausalLM.generate uses {_UNSUPPORTED_CACHES}, got "
                                 f"{type(user).__name__}")
            return
        impl = generation_config.cache_implementation
        if impl not in (None, "dynamic"):
            raise ValueError(f"cache_implementation={impl!r} is not supported by "
                             "MlraForCausalLM: it decodes from its own compact cache (MlraCache)")
        if generation_config.use_cache is False:
            return
        model_kwargs["cache"] = MlraCache(self.config.n_layers)


class CacheContext(AttentionContext):
    """The block forward over an :class:`MlraCache`: each block appends its new tokens' state
    and attends over everything cached, in the absorbed form (families that have one) when
    ``absorbed``."""

    def __init__(self, cache: MlraCache, mask: torch.Tensor | None, absorbed: bool) -> None:
        super().__init__(mask)
        self.cache, self.absorbed = cache, absorbed

    def attend(self, block: Block, q: object, state: dict[str, torch.Tensor]) -> torch.Tensor:
        full = self.cache.append(block.index, state)
        if self.absorbed and hasattr(block.attn, "attend_absorbed"):
            return block.attn.attend_absorbed(q, full, self.mask)
        return block.attn.attend(q, full, self.mask)


def _cache_mask(
    attention_mask: torch.Tensor | None, B: int, T: int, past: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, past + T]``: query t (at cache position past + t) sees the cached and
    new tokens up to itself that are not padding, and always itself (padded queries, whose
    outputs are ignored, never see an empty row). None (plain causal) for a first unpadded
    prompt."""
    if attention_mask is None and past == 0:
        return None
    S = past + T
    q_pos = torch.arange(past, S, device=device)
    keep = torch.arange(S, device=device)[None, :] <= q_pos[:, None]  # [T, S]
    keep = keep[None].expand(B, T, S)
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[:, None, :]
        keep = keep | (torch.arange(S, device=device)[None, :] == q_pos[:, None])[None]
    return keep[:, None]
