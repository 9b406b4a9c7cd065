"""The published (official) MLRA checkpoints: Hugging Face-style directories written by the
research code's ``save_pretrained`` (docs/checkpoints.md).

A directory holds ``config.json`` (``model_type`` "gpt2", no variant field) and either one
``pytorch_model.bin`` or shards ``pytorch_model-0000N-of-0000M.bin`` listed in
``pytorch_model.bin.index.json`` (``.safetensors`` equivalents are accepted too). The variant is
inferred from the keys and shapes; the tensors are renamed and re-laid-out into our
:class:`~mlra.model.Transformer`, whose forward then computes what the official model computes.

Layouts converted (official -> ours, per layer): each attention family's names live with the
family (``official_renames``, ``official_infer`` and ``official_extra`` of its
:class:`~mlra.attention.family.AttentionFamily`: e.g. the latent family's ``q_a_proj`` ->
``wq_a`` and its per-block KV norms and up-projections -> ``kv_norm`` and ``wkv_b``); common to
every family: ``c_proj`` -> ``wo``, ``gated_proj``/``c_gated`` -> ``wg``, MLP ``c_fc1`` (silu
branch) -> ``w_gate``, ``c_fc2`` -> ``w_up``, ``c_proj`` -> ``w_down``; norms; the tied
``transformer.wte``/``lm_head`` pair -> ``embed`` (both must hold the same values).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mlra.attention import families, family_of, get_family
from mlra.checkpoints.format import load_state_checked
from mlra.checkpoints.safety import StateDict, load_weights_file
from mlra.config import VARIANTS, ModelConfig
from mlra.errors import CheckpointError, ConfigError
from mlra.model import Transformer

CONFIG_FILE = "config.json"
SINGLE_FILES = ("pytorch_model.bin", "model.safetensors")
INDEX_FILES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
TIE_TOLERANCE = 1e-6
"""Largest |wte - lm_head| accepted for the duplicated tied embedding."""

_EMBED, _HEAD = "transformer.wte.weight", "lm_head.weight"
_FINAL_NORMS = ("layernorm.weight", "transformer.layernorm.weight")
_LAYER_RE = re.compile(r"^transformer\.h\.(\d+)\.")

_MLP_RENAMES = {"c_fc1": "w_gate", "c_fc2": "w_up", "c_proj": "w_down"}
_VARIANT_SUFFIXES = ("_xxl", "_gen", "_normal_initialization", "_normal_init", "_double_heads")


# ---------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class VariantRequest:
    """What a user asked for with ``--variant``: a base variant and the ablation flags.

    ``None`` means "not stated" (take what the files say)."""

    base: str | None = None
    gated: bool | None = None
    latent_scaling: bool | None = None


def parse_variant(name: str | None) -> VariantRequest:
    """Parse names such as ``mlra_4``, ``MLRA-2``, ``mla_no_scale``, ``gqa_gated``,
    ``mlra_2_gated_xxl`` or ``gla_2_normal_initialization`` (the official output names).

    Normal-init and double-heads ablations change nothing at load time and are accepted as their
    base variant. Raises :class:`ConfigError` for an unknown name."""
    if name is None:
        return VariantRequest()
    key = name.strip().lower().replace("-", "_")
    gated = no_scale = False
    changed = True
    while changed:
        changed = False
        for suffix in _VARIANT_SUFFIXES:
            if key.endswith(suffix):
                key, changed = key[: -len(suffix)], True
        if key.endswith("_gated"):
            key, gated, changed = key[: -len("_gated")], True, True
        if key.endswith("_no_scale"):
            key, no_scale, changed = key[: -len("_no_scale")], True, True
    if key not in VARIANTS:
        raise ConfigError(
            f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}, optionally with the "
            "suffixes _gated and/or _no_scale (e.g. mlra_2_gated, mla_no_scale)"
        )
    if no_scale and key not in ("mla", "gla_2", "gla_4", "mlra_2", "mlra_4"):
        raise ConfigError(f"{name!r}: _no_scale applies only to MLA, GLA and MLRA")
    return VariantRequest(base=key, gated=gated, latent_scaling=False if no_scale else None)


def variant_name(cfg: ModelConfig) -> str:
    """The paper's name of the variant ``cfg`` describes (generic for non-paper grids)."""
    return family_of(cfg).variant_name(cfg)


def full_variant_name(cfg: ModelConfig) -> str:
    """:func:`variant_name` plus the ``_gated`` / ``_no_scale`` suffixes that apply."""
    name = variant_name(cfg)
    if cfg.output_gate:
        name += "_gated"
    if cfg.family == "latent" and not cfg.latent_scaling:  # the ablation exists for it only
        name += "_no_scale"
    return name


# ---------------------------------------------------------------------------------- reading
def is_official_dir(directory: Path) -> bool:
    """True for a directory that looks like a Hugging Face-style official checkpoint."""
    if not directory.is_dir():
        return False
    if any((directory / f).is_file() for f in SINGLE_FILES + INDEX_FILES):
        return True
    cfg = directory / CONFIG_FILE
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type") == "gpt2"
        except (json.JSONDecodeError, AttributeError, OSError):
            return False
    return False


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The official ``config.json`` as a dict (empty when the file is absent)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def read_official_state(directory: Path) -> tuple[StateDict, dict[str, str]]:
    """All tensors of an official checkpoint directory and, per key, the file it came from.

    Shards are read through their index; a shard the index names that is missing, or a key the
    index lists that its shard lacks, is a :class:`CheckpointError` naming both."""
    for index_name in INDEX_FILES:
        index_path = directory / index_name
        if index_path.is_file():
            return _read_sharded(directory, index_path)
    for name in SINGLE_FILES:
        path = directory / name
        if path.is_file():
            state = load_weights_file(path)
            return state, dict.fromkeys(state, name)
    raise CheckpointError(
        f"{directory} holds no weights: expected pytorch_model.bin, or "
        "pytorch_model-0000N-of-0000M.bin shards with pytorch_model.bin.index.json "
        "(or the .safetensors equivalents)"
    )


def _read_sharded(directory: Path, index_path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a valid shard index: {exc}") from exc
    by_file: dict[str, list[str]] = {}
    for key, fname in weight_map.items():
        by_file.setdefault(str(fname), []).append(key)
    state: StateDict = {}
    files: dict[str, str] = {}
    for fname in sorted(by_file):
        path = directory / fname
        if not path.is_file():
            raise CheckpointError(
                f"shard {path} is missing (listed in {index_path.name} for "
                f"{len(by_file[fname])} keys, e.g. {by_file[fname][0]!r})"
            )
        shard = load_weights_file(path)
        for key in by_file[fname]:
            if key not in shard:
                raise CheckpointError(
                    f"{path}: key {key!r} is missing (the index {index_path.name} lists it there)"
                )
        for key, value in shard.items():
            state[key] = value
            files[key] = fname
    return state, files


# ---------------------------------------------------------------------------------- inference
def infer_config(
    state: StateDict, hf: dict[str, Any], source: str = "checkpoint"
) -> tuple[ModelConfig, dict[str, Any]]:
    """The :class:`ModelConfig` of an official state dict (``latent_scaling`` True) and the
    layout facts the converter needs. ``hf`` (config.json) fields, where present, must agree
    with the shapes; they fill in what shapes cannot tell (``n_head`` for MHA/GQA/GTA)."""
    if _EMBED not in state:
        raise CheckpointError(
            f"{source}: key {_EMBED!r} is missing: not an official MLRA checkpoint"
        )
    vocab, d = state[_EMBED].shape
    layers = sorted({int(m.group(1)) for k in state if (m := _LAYER_RE.match(k))})
    if not layers:
        raise CheckpointError(f"{source}: no transformer.h.N.* keys: not an official checkpoint")
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise CheckpointError(f"{source}: layer(s) {missing} missing (keys transformer.h.N.*)")
    attn = {
        k[len("transformer.h.0.attn."):]: v.shape
        for k, v in state.items() if k.startswith("transformer.h.0.attn.")
    }
    fc1 = "transformer.h.0.mlp.c_fc1.weight"
    if fc1 not in state:
        raise CheckpointError(f"{source}: key {fc1!r} is missing")
    checker = _Checker(hf, source)
    checker.check("n_embd", d)
    checker.check("vocab_size", vocab)
    checker.check("n_layer", len(layers))
    checker.check("intermediate_size", state[fc1].shape[0])
    block = checker.get("block_size") or 2048
    common = dict(
        vocab_size=vocab, d_model=d, n_layers=len(layers),
        intermediate_size=state[fc1].shape[0], max_seq_len=block,
    )
    gate_key = next((g for g in ("gated_proj.weight", "c_gated.weight") if g in attn), None)
    layout: dict[str, Any] = {"gate": gate_key}
    if "c_proj.weight" not in attn:
        raise CheckpointError(f"{source}: key 'transformer.h.0.attn.c_proj.weight' is missing")
    out_in = attn["c_proj.weight"][1]
    known = sorted((get_family(n) for n in families() if get_family(n).official_key),
                   key=lambda f: f.official_order)
    family = next((f for f in known if f.official_key in attn), None)
    if family is None:
        raise CheckpointError(
            f"{source}: unrecognised attention keys {sorted(attn)} in layer 0; expected one of "
            "the published variants (paper, section 4: MHA, MQA, GQA, GTA, MFA, TPA, MLA, "
            "GLA, MLRA)"
        )
    fields = family.official_infer(attn, out_in, checker, layout)
    try:
        cfg = ModelConfig(**common, **fields, output_gate=gate_key is not None)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: inferred an invalid configuration: {exc}") from exc
    return replace(cfg, name=full_variant_name(cfg)), layout


class _Checker:
    """Cross-checks config.json fields against values derived from the shapes."""

    def __init__(self, hf: dict[str, Any], source: str) -> None:
        self.hf, self.source = hf, source

    def get(self, field: str) -> int | None:
        """``config.json``'s ``field`` as a positive int (None when absent or null)."""
        value = self.hf.get(field)
        if value is None:
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if number is None or number <= 0:
            raise self.fail(
                f"config.json field {field!r} must be a positive integer, got {value!r}"
            )
        return number

    def check(self, field: str, found: int) -> None:
        value = self.get(field)
        if value is not None and value != found:
            raise CheckpointError(
                f"{self.source}: config.json has {field}={value} but the weights imply {found}"
            )

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {message}")

    def exact_div(self, a: int, b: int, what: str) -> int:
        """``a / b``, or a CheckpointError saying which quantity could not be inferred."""
        if b <= 0 or a % b:
            raise self.fail(f"cannot infer {what}: {a} is not a multiple of {b}")
        return a // b

    def heads_and_dim(self, q_rows: int) -> tuple[int, int]:
        """(n_head, head_dim) of a query projection with ``q_rows`` rows."""
        return _heads_and_dim(q_rows, self)


def _heads_and_dim(q_rows: int, checker: _Checker) -> tuple[int, int]:
    n_head, head_dim = checker.get("n_head"), checker.get("head_dim")
    if n_head is None and head_dim is None:
        raise checker.fail(
            "config.json gives neither n_head nor head_dim; one is needed to split c_q "
            f"({q_rows} rows) into heads"
        )
    if n_head is None:
        n_head = checker.exact_div(q_rows, head_dim, "n_head from c_q rows / head_dim")
    if head_dim is None:
        head_dim = checker.exact_div(q_rows, n_head, "head_dim from c_q rows / n_head")
    if n_head * head_dim != q_rows:
        raise checker.fail(
            f"c_q has {q_rows} rows but config.json says n_head={n_head} x head_dim={head_dim}"
        )
    return n_head, head_dim


# ---------------------------------------------------------------------------------- conversion
def convert_state(
    state: StateDict,
    cfg: ModelConfig,
    layout: dict[str, Any],
    files: dict[str, str] | None = None,
    source: str = "checkpoint",
) -> StateDict:
    """Our state dict from an official one (validated key by key against ``cfg``; errors name
    the official key and the file holding it)."""
    files = files or {}
    with torch.device("meta"):
        model = Transformer(replace(cfg, zero_init_output=False))
    ours = model.state_dict()
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: key {key!r} is missing")
        t = state[key]
        if tuple(t.shape) != tuple(shape):
            where = files.get(key, source)
            raise CheckpointError(
                f"{source}/{where}: key {key!r} has shape {tuple(t.shape)}, expected "
                f"{tuple(shape)} for {cfg.name}"
            )
        used.add(key)
        return t

    out: StateDict = {}

    def rename(official: str, our: str) -> None:
        out[our] = take(official, tuple(ours[our].shape))

    rename(_EMBED, "embed.weight")
    final = next((k for k in _FINAL_NORMS if k in state), _FINAL_NORMS[0])
    rename(final, "norm.weight")
    if _HEAD in state:
        _check_tied(take(_HEAD, tuple(ours["embed.weight"].shape)), state[_EMBED], files, source)
    family = family_of(cfg)
    for i in range(cfg.n_layers):
        src, dst = f"transformer.h.{i}.", f"layers.{i}."
        rename(src + "input_layernorm.weight", dst + "attn_norm.weight")
        rename(src + "post_attention_layernorm.weight", dst + "mlp_norm.weight")
        for o, m in _MLP_RENAMES.items():
            rename(f"{src}mlp.{o}.weight", f"{dst}mlp.{m}.weight")
        rename(src + "attn.c_proj.weight", dst + "attn.wo.weight")
        if layout.get("gate"):
            rename(src + "attn." + layout["gate"], dst + "attn.wg.weight")
        for o, m in family.official_renames.items():
            rename(f"{src}attn.{o}.weight", f"{dst}attn.{m}.weight")
        extra = family.official_extra(cfg, layout, lambda k, s, p=src: take(p + "attn." + k, s))
        for name, tensor in extra.items():
            out[dst + "attn." + name] = tensor
    extra = sorted(set(state) - used)
    if extra:
        raise CheckpointError(
            f"{source}/{files.get(extra[0], '')}: unexpected key {extra[0]!r} for {cfg.name} "
            f"({len(extra)} unexpected)"
        )
    return out


def _check_tied(
    head: torch.Tensor, embed: torch.Tensor, files: dict[str, str], source: str
) -> None:
    if torch.equal(head, embed):
        return
    diff = (head.float() - embed.float()).abs().max().item()
    if diff > TIE_TOLERANCE:
        raise CheckpointError(
            f"{source}: {_HEAD!r} ({files.get(_HEAD, '?')}) differs from {_EMBED!r} "
            f"({files.get(_EMBED, '?')}) by up to {diff:.3g}; the published models tie them, so "
            "this checkpoint is not one of them (or is corrupt)"
        )


# ---------------------------------------------------------------------------------- entry
def resolve_official_config(
    directory: str | Path,
    variant: str | None = None,
    latent_scaling: bool | None = None,
) -> tuple[ModelConfig, StateDict]:
    """Read an official directory, infer its configuration, reconcile it with ``variant`` /
    ``latent_scaling``, and return (config, our state dict)."""
    directory = Path(directory)
    source = str(directory)
    try:
        request = parse_variant(variant)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    hf = read_hf_config(directory)
    state, files = read_official_state(directory)
    cfg, layout = infer_config(state, hf, source)
    found = variant_name(cfg)
    if request.base is not None and request.base != found:
        raise CheckpointError(
            f"--variant {variant} does not match {source}: its weights are {found} "
            f"({_describe(cfg)})"
        )
    if request.gated is not None and request.gated != cfg.output_gate:
        has = "has" if cfg.output_gate else "has no"
        raise CheckpointError(
            f"--variant {variant} does not match {source}: it {has} output-gate weights "
            f"(use --variant {found}{'_gated' if cfg.output_gate else ''})"
        )
    scaling = request.latent_scaling
    if latent_scaling is not None:
        if scaling is not None and scaling != latent_scaling:
            raise CheckpointError(
                f"--variant {variant} contradicts latent_scaling={latent_scaling}"
            )
        scaling = latent_scaling
    if scaling is not None and scaling is False:
        if cfg.family != "latent":  # the no-scale ablation exists for the latent family only
            raise CheckpointError(
                f"no-scale applies only to MLA/GLA/MLRA checkpoints; {source} is {found}"
            )
        cfg = replace(cfg, latent_scaling=False)
        cfg = replace(cfg, name=full_variant_name(cfg))
    return cfg, convert_state(state, cfg, layout, files, source)


def _load_official(
    directory: str | Path,
    variant: str | None = None,
    latent_scaling: bool | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Load an official checkpoint directory as our :class:`Transformer` (eval mode)."""
    cfg, ours = resolve_official_config(directory, variant, latent_scaling)
    with torch.device("meta"):
        model = Transformer(cfg)
    load_state_checked(model, {k: v.contiguous() for k, v in ours.items()}, source=str(directory))
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()


def _describe(cfg: ModelConfig) -> str:
    return family_of(cfg).describe(cfg)
