"""The trainer: learning on the built-in corpus, exact resume, atomic checkpoints, NaN stop,
checkpoint layout and resolution, optimizer groups and schedule."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from mlra import load_checkpoint as load_model
from mlra.checkpoints import runs as ckpt
from mlra.data.prepare import prepare
from mlra.errors import CheckpointError, ConfigError
from mlra.train.config import TrainConfig
from mlra.train.metrics import read_metrics
from mlra.train.optim import clip_gradients, is_decayed, lr_at, param_groups
from mlra.train.trainer import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = (
    "Attention lets every token look at the tokens before it. Multi-head latent attention "
    "compresses keys and values into a small latent vector. Low-rank attention splits that "
    "latent into heads so tensor parallel devices each hold a part of the cache.\n\n"
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A prepared directory of byte-level shards from a small synthetic text."""
    root = tmp_path_factory.mktemp("data")
    src = root / "text.txt"
    src.write_text("".join(f"{i}: {TEXT}" for i in range(120)))
    prepare([str(src)], root / "shards", "byte", progress=False)
    return root / "shards"


def cfg_for(out: Path, data: Path | str, **kw) -> TrainConfig:
    base = dict(
        model="mla", size="tiny", data=str(data), out=str(out), steps=6, batch_size=2,
        seq_len=32, lr=3e-3, warmup_steps=2, eval_interval=3, val_tokens=256, log_interval=1,
        progress=False, model_overrides={"n_layers": 2, "zero_init_output": False},
    )
    base.update(kw)
    return TrainConfig(**base)


def train_losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")
            if r["split"] == "train"]


def test_loss_decreases_on_builtin_corpus(tmp_path, mlra_cache):
    cfg = cfg_for(tmp_path / "run", "builtin", model="gqa", steps=30, batch_size=4, seq_len=64,
                  eval_interval=15, val_tokens=2048, lr=3e-3, warmup_steps=3)
    result = train(cfg, log=lambda m: None)
    first, last = result.val_curve[0][1], result.val_curve[-1][1]
    assert first > 5.0  # ~log(320) at initialisation
    assert last < first - 1.5, result.val_curve
    losses = [loss for _, loss in train_losses(tmp_path / "run")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0


def test_exact_resume_is_bitwise(tmp_path, small_data):
    # One uninterrupted run.
    train(cfg_for(tmp_path / "a", small_data, steps=8, ckpt_interval=4), log=lambda m: None)
    # The same run killed during step 5 (after the step-4 checkpoint), then resumed.
    trainer = Trainer(cfg_for(tmp_path / "b", small_data, steps=8, ckpt_interval=4),
                      log=lambda m: None)

    def kill(step, loss):
        if step == 4:
            raise KeyboardInterrupt
        return loss

    trainer.loss_hook = kill
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert (tmp_path / "b" / "latest").read_text().strip() == "checkpoints/step_000004"
    train(cfg_for(tmp_path / "b", small_data, steps=8, ckpt_interval=4),
          resume=tmp_path / "b", log=lambda m: None)
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert [s for s, _ in a] == list(range(1, 9)) and a == b  # bitwise: exact float equality
    wa = load_model(ckpt.resolve_checkpoint(tmp_path / "a")).state_dict()
    wb = load_model(ckpt.resolve_checkpoint(tmp_path / "b")).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_rejects_a_different_model(tmp_path, small_data):
    train(cfg_for(tmp_path / "r", small_data, steps=2, eval_interval=0), log=lambda m: None)
    with pytest.raises(ConfigError, match="model="):
        train(cfg_for(tmp_path / "r", small_data, model="gqa", steps=4, eval_interval=0),
              resume=tmp_path / "r", log=lambda m: None)


def test_refuses_to_overwrite_a_run(tmp_path, small_data):
    cfg = cfg_for(tmp_path / "r", small_data, steps=1, eval_interval=0)
    train(cfg, log=lambda m: None)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, log=lambda m: None)
    train(cfg, overwrite=True, log=lambda m: None)


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, small_data, monkeypatch):
    real_save = ckpt.save_file
    calls = {"n": 0}

    def failing_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way through its trainer state
            Path(path).write_bytes(b"\x00" * 10)
            raise OSError("disk full (simulated)")
        real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        train(cfg_for(tmp_path / "r", small_data, steps=4, ckpt_interval=2, eval_interval=0),
              log=lambda m: None)
    run = tmp_path / "r"
    assert ckpt.resolve_checkpoint(run).name == "step_000002"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    model = load_model(ckpt.resolve_checkpoint(run))
    assert model.config.n_layers == 2
    monkeypatch.setattr(ckpt, "save_file", real_save)
    result = train(cfg_for(run, small_data, steps=4, ckpt_interval=2, eval_interval=0),
                   resume=run, log=lambda m: None)
    assert result.step == 4 and ckpt.resolve_checkpoint(run).name == "step_000004"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_data):
    trainer = Trainer(cfg_for(tmp_path / "r", small_data, steps=6, ckpt_interval=2,
                              eval_interval=0), log=lambda m: None)
    trainer.loss_hook = lambda step, loss: loss * float("nan") if step == 3 else loss
    with pytest.raises(TrainingDiverged, match=r"nan .* at step 4.*step_000002"):
        trainer.run()
    assert ckpt.resolve_checkpoint(tmp_path / "r").name == "step_000002"
    for p in load_model(ckpt.resolve_checkpoint(tmp_path / "r")).parameters():
        assert torch.isfinite(p).all()


def test_checkpoint_layout_keep_last_and_metrics(tmp_path, small_data):
    run = tmp_path / "r"
    train(cfg_for(run, small_data, steps=8, ckpt_interval=2, keep_last=2, eval_interval=4),
          log=lambda m: None)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [6, 8]
    step_dir = run / "checkpoints" / "step_000008"
    names = {p.name for p in step_dir.iterdir()}
    assert {"config.json", "model.safetensors", "mlra_tokenizer.json", "trainer.safetensors",
            "trainer_state.json"} <= names
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    state = json.loads((step_dir / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["samples"] == 16 and state["config"]["seq_len"] == 32
    assert ckpt.resolve_checkpoint(run) == step_dir
    assert ckpt.resolve_checkpoint(step_dir) == step_dir
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 4, 8]
    assert all(math.isfinite(r["loss"]) for r in rows)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resolve_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither"):
        ckpt.resolve_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("checkpoints/step_000009\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)


def _write_fake(run: Path, step: int, tag: str) -> Path:
    return ckpt.write_checkpoint(
        run, step, lambda d: (d / "config.json").write_text("{}"), None,
        {"step": step, "tag": tag}, {"x": torch.zeros(1)},
    )


def _crash_rewrite(run: Path, step: int, monkeypatch) -> None:
    """Re-write checkpoint ``step`` and die between moving the old copy aside and renaming
    the new one into place."""
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-step_"):
            raise KeyboardInterrupt  # killed after the old copy became .old-step_*
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(ckpt.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            _write_fake(run, step, "new")


def _tag(path: Path) -> str:
    return json.loads((path / "trainer_state.json").read_text())["tag"]


def test_crash_between_renames_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "r"
    _write_fake(run, 2, "old")
    _write_fake(run, 4, "old")
    _crash_rewrite(run, 4, monkeypatch)
    root = run / "checkpoints"
    assert not (root / "step_000004").exists()
    assert [p.name[:17] for p in root.iterdir() if p.name.startswith(".old-")] == [
        ".old-step_000004-"]
    # resolve_checkpoint moves the surviving copy back instead of failing or going back to 2.
    found = ckpt.resolve_checkpoint(run)
    assert found == root / "step_000004" and _tag(found) == "old"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4]

    # clean_partial (run on resume) restores it too rather than deleting the only copy.
    _crash_rewrite(run, 4, monkeypatch)
    ckpt.clean_partial(run)
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000004"]
    assert _tag(root / "step_000004") == "old"


def test_broken_latest_falls_back_to_newest_complete(tmp_path):
    run = tmp_path / "r"
    _write_fake(run, 2, "a")
    _write_fake(run, 4, "b")
    (run / "checkpoints" / "step_000006").mkdir()  # incomplete, no backup to restore
    (run / "latest").write_text("checkpoints/step_000006\n")
    assert ckpt.resolve_checkpoint(run) == run / "checkpoints" / "step_000004"
    (run / "latest").write_text("checkpoints/step_000008\n")  # missing altogether
    assert ckpt.resolve_checkpoint(run) == run / "checkpoints" / "step_000004"


def test_weight_decay_groups():
    from mlra import ModelConfig, Transformer

    model = Transformer(ModelConfig.preset("mlra_4", "tiny"))
    names = {n: is_decayed(n, p) for n, p in model.named_parameters()}
    assert names["layers.0.attn.wq_a.weight"] and names["layers.0.attn.wkv_b.weight"]
    assert names["layers.0.mlp.w_down.weight"]
    assert not names["embed.weight"] and not names["norm.weight"]
    assert not names["layers.0.attn.kv_norm"] and not names["layers.0.attn.q_norm.weight"]
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, 0.1, decay_all=True)) == 1


def test_lr_schedule():
    peak, total, warm = 1e-3, 100, 10
    assert lr_at(0, peak, total, warm) == pytest.approx(1e-4)
    assert lr_at(9, peak, total, warm) == pytest.approx(peak)
    assert lr_at(10, peak, total, warm) == pytest.approx(peak)
    assert lr_at(55, peak, total, warm) == pytest.approx(0.1 * peak + 0.45 * peak)
    assert lr_at(100, peak, total, warm) == pytest.approx(0.1 * peak)
    assert lr_at(500, peak, total, warm) == pytest.approx(0.1 * peak)
    values = [lr_at(s, peak, total, warm) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("max_norm", [0.5, 1e6, math.inf])
@pytest.mark.parametrize("fused", [False, True])
def test_clip_gradients_steps_like_clip_grad_norm(max_norm, fused):
    """Clipped (0.5), not clipped (1e6) or no limit: the same weights as clip_grad_norm_ +
    step; with a fused AdamW the factor goes to the kernel and the gradients stay as they are."""
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(40, 30, generator=g), torch.randn(30, generator=g)]
    grads = [3 * torch.randn(t.shape, generator=g) for t in init]
    results = []
    for ours in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=fused)
        if ours and fused:
            opt.grad_scale = torch.tensor(5.0)  # a stale factor must not survive the call
        for _ in range(2):
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr.clone()
            if ours:
                norm = clip_gradients(opt, params, max_norm)
                unchanged = all(torch.equal(p.grad, gr)
                                for p, gr in zip(params, grads, strict=True))
                if max_norm == 0.5:  # clipped: only the unfused path rewrites the gradients
                    assert unchanged == fused
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()
        results.append((norm, [p.detach() for p in params]))
    (norm_ref, ref), (norm_ours, got) = results
    torch.testing.assert_close(norm_ours, norm_ref)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ref[0], init[0])


def test_clip_gradients_takes_bf16_parameters():
    """The factor handed to the fused kernel is fp32 whatever the gradients' dtype."""
    g = torch.Generator().manual_seed(4)
    init = torch.randn(64, 32, generator=g).bfloat16()
    grad = (4 * torch.randn(64, 32, generator=g)).bfloat16()
    results = []
    for ours in (False, True):
        p = torch.nn.Parameter(init.clone())
        opt = torch.optim.AdamW([p], lr=1e-2, fused=True)
        p.grad = grad.clone()
        norm = (clip_gradients(opt, [p], 0.5) if ours
                else torch.nn.utils.clip_grad_norm_([p], 0.5))
        opt.step()
        results.append((norm.float(), p.detach().float()))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-2, atol=1e-2)
    assert not torch.equal(results[1][1], init.float())
