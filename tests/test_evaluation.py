"""The evaluation driver: explainers by name, the single-process path of the sharding, and the table
built from per-object values (the 2-process run is in test_localization.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchcam_ops import evaluation
from torchcam_ops.methods import GIGCAM, AbsCAM, GradCAM, make_explainer


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def test_explainers_by_name():
    model = _small_model()
    assert isinstance(make_explainer("gradcam", model, ["1"], input_size=96), GradCAM)
    fused = make_explainer("gig_cam+m", model, ["1"], input_size=96)
    assert isinstance(fused, GIGCAM) and fused.scales == (96, 139, 182, 226)
    assert make_explainer("abscam_phase1", model, ["1"], input_size=96).phase == 1
    assert isinstance(make_explainer("abscam", model, ["1"], input_size=96), AbsCAM)
    with pytest.raises(ValueError, match="method: unknown method 'nope'"):
        make_explainer("nope", model, ["1"], input_size=96)


def test_one_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    processes = evaluation.TorchrunProcess("cpu")
    assert (processes.rank, processes.world, processes.distributed) == (0, 1, False)
    assert list(processes.mine(3)) == [0, 1, 2]
    table = {"a": torch.arange(4.0)}
    assert torch.equal(processes.assemble(table)["a"], table["a"])
    processes.close()
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda', got 'tpu'"):
        evaluation.TorchrunProcess("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no GPU"):
            evaluation.TorchrunProcess("cuda")


def _benchmark(count: int, others: bool) -> evaluation.Benchmark:
    masks = torch.zeros(count, 8, 8, dtype=torch.bool)
    return evaluation.Benchmark(
        "about",
        _small_model(),
        "1",
        torch.rand(count, 1, 8, 8),
        torch.tensor([0, 0, 1, 2]),
        masks,
        masks if others else None,
        step=16,
    )


def test_summary_row_from_per_object_values():
    benchmark = _benchmark(4, others=True)
    tables = {
        "deletion": torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]] * 4),
        "insertion": torch.zeros(4, 5),
        "deletion_auc": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "insertion_auc": torch.tensor([0.5, 0.5, 0.5, 0.9]),
        "original": torch.tensor([0.5, 0.8, 0.4, 0.2]),
        "masked": torch.tensor([0.25, 0.9, 0.1, 0.2]),
        "hit": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "energy": torch.tensor([0.2, 0.4, 0.6, 0.8]),
        "road_morf": torch.tensor([-1.0, -2.0, 0.0, -1.0]),
        "road_lerf": torch.tensor([0.5, 0.0, 0.0, 0.5]),
        "road_combined": torch.tensor([0.75, 1.0, 0.0, 0.75]),
        "other_hit": torch.tensor([0.0, 0.0, 0.0, 1.0]),
        "other_energy": torch.tensor([0.1, 0.1, 0.1, 0.1]),
        "seconds": torch.tensor([0.002, 0.006], dtype=torch.float64),
    }
    report = evaluation.summarize(benchmark, {"m": tables})
    assert report.header[-1] == "ms / object" and "points at other object" in report.header
    # drop: (0.5 + 0 + 0.75 + 0) / 4 = 31.25 %; increase: 1 of 4; pointing: class 0 hits 1/2, classes 1, 2: 1 and 0
    # ROAD: the means of MoRF -1, LeRF 0.25 and combined 0.625
    assert report.rows == [
        [
            "m",
            "0.2500",
            "0.6000",
            "31.25",
            "25.00",
            "0.500",
            "0.500",
            "-1.0000",
            "0.2500",
            "0.6250",
            "0.250",
            "0.100",
            "2.0",
        ]
    ]
    fractions, deletion_mean, _ = report.curves["m"]
    np.testing.assert_allclose(fractions, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(deletion_mean, [1, 0, 0, 0, 0])
    rows = evaluation.per_object_rows(benchmark, {"m": tables})
    assert rows[0] == ["method", "object", "target", *evaluation.PER_OBJECT_COLUMNS]
    assert float(rows[2][3]) == float(tables["deletion_auc"][1])  # written exactly
    assert len(rows) == 5
