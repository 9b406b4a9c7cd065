"""Shared test helpers: tiny random models with non-zero output projections."""

from __future__ import annotations

import os

import torch

# Without CUDA the Triton kernels run in the Triton interpreter. The variable must be set before
# anything imports the kernel modules (their @triton.jit functions are built at import time), so
# it is set here for the whole session rather than in test_kernels.py alone. It changes nothing
# else: on CPU tensors the kernel dispatch uses the PyTorch references.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mlra  # noqa: E402
from mlra import ModelConfig, Transformer  # noqa: E402


def tiny_config(name: str, **overrides) -> ModelConfig:
    """The tiny preset with non-zero output projections, so attention changes the output."""
    overrides.setdefault("zero_init_output", False)
    return ModelConfig.preset(name, size="tiny", **overrides)


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random model of variant ``name`` in eval mode."""
    torch.manual_seed(seed)
    return Transformer(tiny_config(name, **overrides)).to(dtype).eval()


def poison_embeddings(monkeypatch, model, token: int) -> None:
    """Make ``model`` raise RuntimeError("injected fault") in any forward that embeds ``token``
    (a fault inside the model, for tests of fault isolation)."""
    real = model.embed_tokens

    def embed(ids):
        if bool((ids == token).any()):
            raise RuntimeError("injected fault")
        return real(ids)

    monkeypatch.setattr(model, "embed_tokens", embed)


@pytest.fixture(params=mlra.VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def mlra_cache(tmp_path_factory):
    """Keep the built-in corpus cache (``MLRA_CACHE``) out of the home directory, shared by the
    session."""
    path = tmp_path_factory.getbasetemp() / "mlra-cache"
    old = os.environ.get("MLRA_CACHE")
    os.environ["MLRA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLRA_CACHE", None)
    else:
        os.environ["MLRA_CACHE"] = old


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from more, and a busy machine loses a lot."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def ptxas_for_sm90() -> bool:
    """Whether Triton can compile for sm_90 here (its bundled ptxas, or one on PATH): the
    ahead-of-time checks of the Hopper kernels run on a CPU only then."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("triton") is None:
        return False
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(90).path is not None
    except Exception:  # no bundled ptxas
        return shutil.which("ptxas") is not None


def run_without_interpreter(args: list[str], timeout: int = 600,
                            extra_env: dict[str, str] | None = None) -> str:
    """Run ``python ARGS`` in a process without ``TRITON_INTERPRET`` (which would replace the
    kernels by interpreted ones, so nothing compiles for sm_90), asserting that it succeeds;
    its standard output."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
