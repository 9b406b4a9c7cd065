"""``MlraCache``: a ``transformers.Cache`` that holds each layer's compact state.

Per layer it keeps what the attention layer's ``kv_state`` returns, ``[batch, time, ...]``
tensors appended along time: the latent heads and the shared RoPE key for MLA/GLA/MLRA (no
per-head K or V -- decoding reads them through the absorbed form), the tied state for GTA, the
factors for TPA, K and V for MHA/MQA/GQA/MFA. ``generate`` reorders it for beam search, repeats
and selects rows for batch expansion and contrastive search, and crops it for assisted decoding.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

State = dict[str, torch.Tensor]


class MlraLayerCache(CacheLayerMixin):
    """One layer's compact state: a dict of ``[batch, time, ...]`` tensors."""

    is_croppable = True
    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.state: State = {}

    # -- MLRA's entry point ------------------------------------------------------------------
    def append(self, new: State) -> State:
        """Append the new tokens' state (same keys every call) and return the whole state."""
        if not self.state:
            self.device = next(iter(new.values())).device
            self.state = {k: v for k, v in new.items()}
            self.is_initialized = True
        else:
            if set(new) != set(self.state):
                raise ValueError(f"cache update with keys {sorted(new)}, the layer holds "
                                 f"{sorted(self.state)}")
            self.state = {k: torch.cat([self.state[k], new[k]], dim=1) for k in self.state}
        return self.state

    # -- the transformers layer interface -----------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise NotImplementedError(
            "MlraCache holds each layer's compact state, not per-head keys and values; it is "
            "filled by MlraForCausalLM's forward"
        )

    def update(self, key_states, value_states, *args, **kwargs):
        self.lazy_initialization(key_states, value_states)

    def get_seq_length(self) -> int:
        if not self.state:
            return 0
        return next(iter(self.state.values())).shape[1]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def _map(self, fn) -> None:
        self.state = {k: fn(v) for k, v in self.state.items()}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda v: v.index_select(0, beam_idx.to(v.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda v: v.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda v: v[indices])

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (transformers passes a count <= 0, as to
        its own caches; 0 changes nothing)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes minus the number of tokens to drop, got "
                             f"{tokens_to_remove}")
        if tokens_to_remove:
            keep = self.get_seq_length() + tokens_to_remove
            self._map(lambda v: v[:, :keep])

    def reset(self) -> None:
        self.state = {}
        self.is_initialized = False

    def offload(self) -> None:
        self._map(lambda v: v.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.state:
            self._map(lambda v: v.to(self.device, non_blocking=True))

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.state.values())


class MlraCache(Cache):
    """The compact cache of an MLRA-family model: one :class:`MlraLayerCache` per layer.

    ``MlraForCausalLM.generate`` makes one; pass ``cache=MlraCache(n_layers)`` to keep it
    (e.g. to read :attr:`nbytes`).
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[MlraLayerCache() for _ in range(num_layers)])

    def append(self, layer_idx: int, new: State) -> State:
        """Append ``new`` to layer ``layer_idx``; returns the layer's whole state."""
        return self.layers[layer_idx].append(new)

    def state(self, layer_idx: int) -> State:
        """Layer ``layer_idx``'s cached state (empty before the first forward)."""
        return self.layers[layer_idx].state

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's cached tensors."""
        return sum(layer.nbytes for layer in self.layers)
