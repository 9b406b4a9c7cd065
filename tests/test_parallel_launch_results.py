"""``launch`` brings rank results back with ``torch.load(weights_only=True)``: plain results
(tensors, numbers, str, None, containers) round-trip exactly; anything that would need
arbitrary unpickling fails its rank with a clear error and is never unpickled."""

from __future__ import annotations

import builtins
import dataclasses
from pathlib import Path

import pytest
import torch

from mlra.parallel import RankFailedError, launch
from mlra.parallel.launch import _serialise_result


@dataclasses.dataclass
class _Point:
    x: int


class _Payload:
    """Unpickling this object would call open(marker, "w"): creating the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _plain(ctx):
    return {
        "rank": ctx.rank, "logits": torch.full((2, 3), float(ctx.rank), dtype=torch.bfloat16),
        "tokens": [[1, 2], [3]], "pair": (0.5, "s"), "none": None, "flag": True,
        "dtype": torch.float16, "size": torch.Size([4]),
    }


def _dataclass(ctx):
    return [_Point(ctx.rank)]


def _payload(ctx, marker):
    return {"ok": 1, "bad": _Payload(marker)}


def test_plain_results_round_trip() -> None:
    results = launch(_plain, 2, device="cpu", timeout_s=60)
    for rank, got in enumerate(results):
        assert got["rank"] == rank and got["tokens"] == [[1, 2], [3]]
        assert got["pair"] == (0.5, "s") and got["none"] is None and got["flag"] is True
        assert got["dtype"] is torch.float16 and got["size"] == torch.Size([4])
        assert got["logits"].dtype == torch.bfloat16
        assert torch.equal(got["logits"], torch.full((2, 3), float(rank), dtype=torch.bfloat16))


def test_object_result_fails_the_rank_with_a_clear_error() -> None:
    with pytest.raises(RankFailedError, match=r"rank \d failed: TypeError: .*_Point.*cannot"):
        launch(_dataclass, 2, device="cpu", timeout_s=60)


def test_malicious_result_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(RankFailedError, match=r"TypeError: .*holds io\.open"):
        launch(_payload, 1, args=(str(marker),), device="cpu", timeout_s=60)
    assert not marker.exists()


def test_serialise_result_checks_in_process(tmp_path: Path) -> None:
    assert isinstance(_serialise_result({"a": [torch.ones(1), 2, None]}), bytes)
    with pytest.raises(TypeError, match="return only tensors"):
        _serialise_result(range(3))
    with pytest.raises(TypeError, match=r"holds io\.open"):
        _serialise_result(_Payload(str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()
