"""The published (official) MLRA checkpoints: Hugging Face-style directories written by the
research code's ``save_pretrained`` (official-implementation.md section 2).

A directory holds ``config.json`` (``model_type`` "gpt2", no variant field) and either one
``pytorch_model.bin`` or shards ``pytorch_model-0000N-of-0000M.bin`` listed in
``pytorch_model.bin.index.json`` (``.safetensors`` equivalents are accepted too). The variant is
inferred from the keys and shapes; the tensors are renamed and re-laid-out into our
:class:`~mlra.model.Transformer`, whose forward then computes what the official model computes.

Layouts converted (official -> ours, per layer):

- latent family: ``q_a_proj`` -> ``wq_a``, ``q_a_layernorm`` -> ``q_norm``, ``q_b_proj`` ->
  ``wq_b``, ``kv_a_proj_with_mqa`` -> ``wkv_a``; the per-block KV norms -> ``kv_norm``
  [latent heads, w]; the up-projection -> ``wkv_b`` [latent heads, w, out] (our layout is the
  official raw (block, in, out) one; MLA's and GLA-2's Linear (out, in) weights are transposed
  and stacked). Official latent block j is our latent head j = branch * groups + group.
- standard: ``c_q/c_k/c_v`` -> ``wq/wk/wv``; GTA ``kv_proj`` -> ``w_kv``, ``W_rope_k`` ->
  ``w_rope_k``; MFA ``c_q`` -> ``wq_a``, ``q_layernorm`` -> ``q_norm``, ``w_q`` -> ``wq_b``;
  TPA ``c_qkv.W_{A,B}_{q,k,v}`` -> ``w_{a,b}{q,k,v}``.
- every family: ``c_proj`` -> ``wo``, ``gated_proj``/``c_gated`` -> ``wg``, MLP ``c_fc1`` (silu
  branch) -> ``w_gate``, ``c_fc2`` -> ``w_up``, ``c_proj`` -> ``w_down``; norms; the tied
  ``transformer.wte``/``lm_head`` pair -> ``embed`` (both must hold the same values).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

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

# Official attention weight names (under transformer.h.{i}.attn., ".weight" implied) -> ours.
_RENAMES: dict[str, dict[str, str]] = {
    "standard": {"c_q": "wq", "c_k": "wk", "c_v": "wv"},
    "gta": {"c_q": "wq", "kv_proj": "w_kv", "W_rope_k": "w_rope_k"},
    "mfa": {"c_q": "wq_a", "q_layernorm": "q_norm", "w_q": "wq_b", "c_k": "wk", "c_v": "wv"},
    "tpa": {
        "c_qkv.W_A_q": "w_aq", "c_qkv.W_A_k": "w_ak", "c_qkv.W_A_v": "w_av",
        "c_qkv.W_B_q": "w_bq", "c_qkv.W_B_k": "w_bk", "c_qkv.W_B_v": "w_bv",
    },
    "latent": {
        "q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
        "kv_a_proj_with_mqa": "wkv_a",
    },
}
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
    if cfg.attention == "standard":
        if cfg.n_kv_heads == cfg.n_heads:
            return "mha"
        return "mqa" if cfg.n_kv_heads == 1 else "gqa"
    if cfg.attention != "latent":
        return cfg.attention
    b, g = cfg.latent_branches, cfg.latent_groups
    if (b, g) == (1, 1):
        return "mla"
    if b == 1:
        return f"gla_{g}"
    if (b, g) in ((2, 2), (4, 1)):
        return f"mlra_{b}"
    return f"latent_b{b}_g{g}"


def full_variant_name(cfg: ModelConfig) -> str:
    """:func:`variant_name` plus the ``_gated`` / ``_no_scale`` suffixes that apply."""
    name = variant_name(cfg)
    if cfg.output_gate:
        name += "_gated"
    if cfg.attention == "latent" and not cfg.latent_scaling:
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
    if "kv_a_proj_with_mqa.weight" in attn:
        fields = _infer_latent(attn, out_in, checker, layout)
    elif "c_qkv.W_A_q.weight" in attn:
        fields = _infer_tpa(attn, out_in, checker)
    elif "w_q.weight" in attn:
        fields = _infer_mfa(attn, checker)
    elif "kv_proj.weight" in attn:
        fields = _infer_standard(attn, out_in, checker, tied=True)
    elif "c_k.weight" in attn:
        fields = _infer_standard(attn, out_in, checker, tied=False)
    else:
        raise CheckpointError(
            f"{source}: unrecognised attention keys {sorted(attn)} in layer 0; expected one of "
            "the official variants (official-implementation.md section 2.1)"
        )
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


def _exact_div(a: int, b: int, what: str, checker: _Checker) -> int:
    if b <= 0 or a % b:
        raise checker.fail(f"cannot infer {what}: {a} is not a multiple of {b}")
    return a // b


def _heads_and_dim(q_rows: int, checker: _Checker) -> tuple[int, int]:
    n_head, head_dim = checker.get("n_head"), checker.get("head_dim")
    if n_head is None and head_dim is None:
        raise checker.fail(
            "config.json gives neither n_head nor head_dim; one is needed to split c_q "
            f"({q_rows} rows) into heads"
        )
    if n_head is None:
        n_head = _exact_div(q_rows, head_dim, "n_head from c_q rows / head_dim", checker)
    if head_dim is None:
        head_dim = _exact_div(q_rows, n_head, "head_dim from c_q rows / n_head", checker)
    if n_head * head_dim != q_rows:
        raise checker.fail(
            f"c_q has {q_rows} rows but config.json says n_head={n_head} x head_dim={head_dim}"
        )
    return n_head, head_dim


def _infer_standard(
    attn: dict[str, torch.Size], out_in: int, checker: _Checker, tied: bool
) -> dict[str, Any]:
    if "c_q.weight" not in attn:
        raise checker.fail("key 'transformer.h.0.attn.c_q.weight' is missing")
    H, dh = _heads_and_dim(attn["c_q.weight"][0], checker)
    kv_rows = attn["kv_proj.weight" if tied else "c_k.weight"][0]
    n_kv = _exact_div(kv_rows, dh, "the number of KV heads", checker)
    group = checker.get("group_size")
    if group is not None and H % group:
        raise checker.fail(f"config.json group_size={group} does not divide n_head={H}")
    if group is not None and H // group != n_kv:
        raise checker.fail(
            f"config.json group_size={group} means {H // group} KV heads, but the K/V weights "
            f"have {n_kv}"
        )
    if out_in != H * dh:
        raise checker.fail(f"attn.c_proj takes {out_in} inputs, expected n_head*head_dim={H * dh}")
    fields: dict[str, Any] = dict(n_heads=H, head_dim=dh, n_kv_heads=n_kv)
    if tied:
        if "W_rope_k.weight" not in attn:
            raise checker.fail("key 'transformer.h.0.attn.W_rope_k.weight' is missing")
        fields.update(attention="gta", rope_dim=attn["W_rope_k.weight"][0])
    else:
        fields.update(attention="standard")
    return fields


def _infer_mfa(attn: dict[str, torch.Size], checker: _Checker) -> dict[str, Any]:
    for k in ("c_q.weight", "c_k.weight"):
        if k not in attn:
            raise checker.fail(f"key 'transformer.h.0.attn.{k}' is missing")
    dh = attn["c_k.weight"][0]
    H = _exact_div(attn["w_q.weight"][0], dh, "n_head from w_q rows / head_dim", checker)
    checker.check("head_dim", dh)
    checker.check("n_head", H)
    checker.check("share_q_dim", attn["c_q.weight"][0])
    return dict(attention="mfa", n_heads=H, head_dim=dh, q_lora_rank=attn["c_q.weight"][0])


def _infer_tpa(attn: dict[str, torch.Size], out_in: int, checker: _Checker) -> dict[str, Any]:
    names = ("W_A_q", "W_B_q", "W_A_k", "W_B_k")
    for n in names:
        if f"c_qkv.{n}.weight" not in attn:
            raise checker.fail(f"key 'transformer.h.0.attn.c_qkv.{n}.weight' is missing")
    aq, bq, ak, bk = (attn[f"c_qkv.{n}.weight"][0] for n in names)
    H = checker.get("n_head")
    if H is None:  # aq*bq/out_in = (H Rq)(Rq dh)/(H dh) = Rq^2
        Rq = math.isqrt(aq * bq // out_in)
        H = _exact_div(aq, max(Rq, 1), "n_head from W_A_q rows / q_rank", checker)
    Rq = _exact_div(aq, H, "q_rank from W_A_q rows / n_head", checker)
    R = _exact_div(ak, H, "rank from W_A_k rows / n_head", checker)
    dh = _exact_div(out_in, H, "head_dim from c_proj inputs / n_head", checker)
    if bq != Rq * dh or bk != R * dh:
        raise checker.fail(
            f"TPA factor shapes disagree: W_B_q {bq} rows, W_B_k {bk} rows for q_rank={Rq}, "
            f"rank={R}, head_dim={dh}"
        )
    checker.check("head_dim", dh)
    checker.check("rank", R)
    checker.check("q_rank", Rq)
    return dict(attention="tpa", n_heads=H, head_dim=dh, tpa_rank=R, tpa_q_rank=Rq)


def _latent_blocks(attn: dict[str, torch.Size], checker: _Checker) -> tuple[str, list, list]:
    """(layout, official norm names, official up-projection names) for the latent family."""
    if "kv_b_proj.weight" in attn:
        return "linear", ["kv_a_layernorm.weight"], ["kv_b_proj.weight"]
    if "kv_b_proj_1.weight" in attn:
        n = 1
        while f"kv_b_proj_{n + 1}.weight" in attn:
            n += 1
        return (
            "split",
            [f"kv_a_layernorm_{k}.weight" for k in range(1, n + 1)],
            [f"kv_b_proj_{k}.weight" for k in range(1, n + 1)],
        )
    if "kv_b_proj" in attn:
        n = attn["kv_b_proj"][0] if len(attn["kv_b_proj"]) == 3 else 0
        if n == 0:
            raise checker.fail(
                f"raw kv_b_proj has shape {tuple(attn['kv_b_proj'])}, expected (blocks, in, out)"
            )
        return "raw", [f"kv_a_layernorms.{j}.weight" for j in range(n)], ["kv_b_proj"]
    raise checker.fail("no kv_b_proj weights in layer 0 of a latent-family checkpoint")


def _infer_latent(
    attn: dict[str, torch.Size], out_in: int, checker: _Checker, layout: dict[str, Any]
) -> dict[str, Any]:
    kind, norms, ups = _latent_blocks(attn, checker)
    for key in norms + ups + ["q_a_proj.weight", "q_b_proj.weight"]:
        if key not in attn:
            raise checker.fail(f"key 'transformer.h.0.attn.{key}' is missing")
    n_blocks = len(norms)
    width = attn[norms[0]][0]
    dc = n_blocks * width
    dr = attn["kv_a_proj_with_mqa.weight"][0] - dc
    if dr <= 0:
        raise checker.fail(
            f"kv_a_proj_with_mqa has {attn['kv_a_proj_with_mqa.weight'][0]} rows, not more than "
            f"the latent width {dc}"
        )
    q_rows = attn["q_b_proj.weight"][0]  # H * (dn + dr); c_proj takes H * dn
    H = checker.get("n_head")
    if H is None:
        H = _exact_div(q_rows - out_in, dr, "n_head from q_b_proj and c_proj", checker)
    dn = _exact_div(out_in, H, "qk_nope_head_dim from c_proj inputs / n_head", checker)
    if q_rows != H * (dn + dr):
        raise checker.fail(
            f"q_b_proj has {q_rows} rows, expected n_head*(nope+rope)={H * (dn + dr)}"
        )
    if kind == "raw":
        out = attn["kv_b_proj"][2]
        groups = _exact_div(H * 2 * dn, out, "latent groups from kv_b_proj width", checker)
        branches = _exact_div(n_blocks, groups, "latent branches (blocks / groups)", checker)
    else:
        branches, groups = 1, n_blocks
    checker.check("n_head", H)
    checker.check("qk_nope_head_dim", dn)
    checker.check("qk_rope_head_dim", dr)
    checker.check("kv_lora_rank", dc)
    checker.check("q_lora_rank", attn["q_a_proj.weight"][0])
    layout.update(latent=kind, norms=norms, ups=ups)
    return dict(
        attention="latent", n_heads=H, head_dim=dn, rope_dim=dr, kv_lora_rank=dc,
        q_lora_rank=attn["q_a_proj.weight"][0], latent_branches=branches, latent_groups=groups,
    )


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
    fam = cfg.attention
    for i in range(cfg.n_layers):
        src, dst = f"transformer.h.{i}.", f"layers.{i}."
        rename(src + "input_layernorm.weight", dst + "attn_norm.weight")
        rename(src + "post_attention_layernorm.weight", dst + "mlp_norm.weight")
        for o, m in _MLP_RENAMES.items():
            rename(f"{src}mlp.{o}.weight", f"{dst}mlp.{m}.weight")
        rename(src + "attn.c_proj.weight", dst + "attn.wo.weight")
        if layout.get("gate"):
            rename(src + "attn." + layout["gate"], dst + "attn.wg.weight")
        for o, m in _RENAMES[fam].items():
            rename(f"{src}attn.{o}.weight", f"{dst}attn.{m}.weight")
        if fam == "latent":
            norm, up = _latent_up(cfg, layout, lambda k, s, p=src: take(p + "attn." + k, s))
            out[dst + "attn.kv_norm"] = norm
            out[dst + "attn.wkv_b"] = up
    extra = sorted(set(state) - used)
    if extra:
        raise CheckpointError(
            f"{source}/{files.get(extra[0], '')}: unexpected key {extra[0]!r} for {cfg.name} "
            f"({len(extra)} unexpected)"
        )
    return out


def _latent_up(cfg: ModelConfig, layout: dict[str, Any], take) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_norm [latent heads, w], wkv_b [latent heads, w, out]) from the official tensors."""
    n, w = cfg.n_latent_heads, cfg.latent_head_dim
    out = cfg.n_heads // cfg.latent_groups * 2 * cfg.head_dim
    norms, ups = layout["norms"], layout["ups"]
    if layout["latent"] == "raw":
        norm = torch.stack([take(k, (w,)) for k in norms])
        return norm, take(ups[0], (n, w, out))
    if layout["latent"] == "linear":  # MLA: one norm over all latent dims, Linear (out, in)
        return take(norms[0], (w,)).reshape(1, w), take(ups[0], (out, w)).t()[None]
    norm = torch.stack([take(k, (w,)) for k in norms])  # GLA-G split: per-block Linear
    return norm, torch.stack([take(k, (out, w)).t() for k in ups])


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
        if cfg.attention != "latent":
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
    if cfg.attention == "latent":
        return (
            f"{cfg.n_latent_heads} latent heads of width {cfg.latent_head_dim}, "
            f"{cfg.latent_branches} branch(es) x {cfg.latent_groups} group(s)"
        )
    if cfg.attention in ("standard", "gta"):
        return f"{cfg.n_heads} query heads, {cfg.n_kv_heads} KV heads of {cfg.head_dim}"
    return f"{cfg.attention} with {cfg.n_heads} heads of {cfg.head_dim}"
