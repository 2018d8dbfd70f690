"""The localisation benchmark: exact boxes and masks, reproducible canvases, the shipped network,
and the evaluate command on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from torchcam_ops import evaluation, localization

if not (localization.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
    pytest.skip("apt-get install dataset-fashion-mnist", allow_module_level=True)
pytest.importorskip("skimage.data", reason="pip install scikit-image")


def test_canvases_are_reproducible_with_exact_ground_truth():
    first = localization.make_canvases(20, seed=5)
    again = localization.make_canvases(20, seed=5)
    assert torch.equal(first.images, again.images) and torch.equal(first.boxes, again.boxes)
    assert first.images.shape == (20, 1, 96, 96)
    assert (first.labels[:, 0] != first.labels[:, 1]).all()
    for n in range(20):
        for k in range(2):
            x0, y0, x1, y1 = first.boxes[n, k].tolist()
            mask = first.masks[n, k]
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the box is the exact extent of the object's pixels
            assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)
        assert not (first.masks[n, 0] & first.masks[n, 1]).any()  # the two objects never overlap


def test_shipped_network_recognises_both_objects():
    model = localization.load_model()
    canvases = localization.make_canvases(300, split="test", seed=3)
    with torch.no_grad():
        top2 = model(canvases.images).topk(2, dim=1).indices
    found = (top2[:, :, None] == canvases.labels[:, None, :]).any(1).float().mean()
    assert float(found) > 0.85  # share of the objects whose class is in the top 2 of their canvas (0.88)


def test_evaluate_localization(tmp_path, capsys):
    from torchcam_ops import cli

    cli.main(
        ["evaluate", "--benchmark", "localization", "--count", "6", "--methods", "gradcam,tsgb", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "points at other object" in out and "(6 Fashion-MNIST canvases of two objects" in out
    rows = (tmp_path / "evaluation.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].endswith("energy on other object,ms / object")
    per_object = (tmp_path / "per_object.csv").read_text().strip().splitlines()
    assert len(per_object) == 1 + 2 * 12 and per_object[0].startswith("method,object,target,deletion_auc")


def _evaluate_command(out, *launcher):
    return [
        sys.executable,
        *launcher,
        "-m",
        "torchcam_ops",
        "evaluate",
        "--benchmark",
        "localization",
        "--count",
        "7",
        "--chunk",
        "4",
        "--methods",
        "gradcam,tsgb",
        "--out",
        str(out),
    ]


def test_torchrun_evaluation_equals_one_process(tmp_path):
    """2 processes (gloo) share out 4 chunks of 4 objects unevenly; every per-object value and the table
    are exactly those of one process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    one = subprocess.run(_evaluate_command(tmp_path / "one"), env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        _evaluate_command(tmp_path / "two", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert "2 process(es) on cpu" in two.stdout and "1 process(es) on cpu" in one.stdout
    assert two.stdout.count("deletion AUC") == 1  # only the first process reports
    one_rows = (tmp_path / "one" / "per_object.csv").read_text().splitlines()
    assert len(one_rows) == 1 + 2 * 14
    assert (tmp_path / "two" / "per_object.csv").read_text().splitlines() == one_rows

    def table(path):  # the explainer time per object differs from run to run
        return [row.rsplit(",", 1)[0] for row in (path / "evaluation.csv").read_text().splitlines()]

    assert table(tmp_path / "two") == table(tmp_path / "one")


class _ThreeProcesses(evaluation.TorchrunProcess):
    def __init__(self):
        self.rank, self.world, self.distributed, self.device = 0, 3, False, torch.device("cpu")


def test_more_processes_than_chunks_is_refused_everywhere():
    benchmark = evaluation.localization_benchmark(2)  # 4 objects
    with pytest.raises(ValueError, match="chunk: 1 chunks of 4 objects for 3 processes"):
        evaluation.evaluate_method(benchmark, "gradcam", _ThreeProcesses(), chunk=4)


def test_evaluate_sanity_check_on_the_localization_benchmark(tmp_path, capsys):
    from torchcam_ops import cli

    cli.main(
        [
            "evaluate",
            "--benchmark",
            "localization",
            "--count",
            "3",
            "--methods",
            "gradcam,tsgb",
            "--sanity",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "Randomisation sanity check" in out and "permuted labels" in out
    markdown = (tmp_path / "evaluation.md").read_text()
    section = markdown.split("## Randomisation sanity check", 1)[1]
    header = "| method | output layer | + last quarter | + last half | all layers | permuted labels |"
    assert header in section
    for method in ("gradcam", "tsgb"):
        row = next(line for line in section.splitlines() if line.startswith(f"| {method} |"))
        cells = row.strip("| ").split(" | ")[1:]
        assert len(cells) == 5 and all(c == "constant" or -1 <= float(c.split()[0]) <= 1 for c in cells)
        if method == "gradcam":  # a new classifier alone decorrelates Grad-CAM (0.07 on 16 objects)
            assert float(cells[0].split()[0]) < 0.8
    csv_header = (tmp_path / "evaluation.csv").read_text().splitlines()[0]
    assert "randomisation Spearman rank correlation: permuted labels" in csv_header
    assert "randomisation HOG correlation: output layer" in csv_header
    assert (tmp_path / "sanity_check.png").stat().st_size > 1000
    assert "Randomisation sanity check" in (tmp_path / "report.html").read_text()
