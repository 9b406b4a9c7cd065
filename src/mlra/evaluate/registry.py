"""Register :class:`~mlra.evaluate.harness.MlraLM` with lm-eval as model ``mlra``.

Called by ``import mlra``: a lazy entry (lm-eval imports the class on first use), made only
when lm-eval is installed. lm-eval has no plug-in discovery for models, so the ``lm_eval``
command itself does not see it; from the command line use ``--model hf --model_args
pretrained=DIR,trust_remote_code=True`` on a directory from ``mlra convert --format hf``.
"""

from __future__ import annotations

MODEL_NAME = "mlra"
TARGET = "mlra.evaluate.harness:MlraLM"


def register_lm_eval() -> bool:
    """Register ``mlra`` with lm-eval's model registry; False when lm-eval is missing."""
    try:
        import lm_eval.models  # noqa: F401  (lm-eval's own lazy entries, made before ours)
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    try:
        model_registry.register(MODEL_NAME, target=TARGET)
    except ValueError:  # already registered (by us: re-import, or a class already resolved)
        pass
    return True
