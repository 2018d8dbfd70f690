"""The localisation benchmark: exact boxes and masks, reproducible canvases, the shipped network,
and the evaluate command on it."""

from __future__ import annotations

import pytest
import torch

from torchcam_ops import localization

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
    assert float(found) > 0.6  # share of the objects whose class is in the top 2 of their canvas


def test_evaluate_localization(tmp_path, capsys):
    from torchcam_ops import cli

    cli.main(["evaluate", "--benchmark", "localization", "--count", "6", "--methods", "gradcam,tsgb",
              "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "points at other object" in out and "(6 Fashion-MNIST canvases of two objects" in out
    rows = (tmp_path / "evaluation.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].endswith("energy on other object,ms / image")
