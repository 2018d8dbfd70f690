"""torchcam_ops.viz: overlays at the image's own size, grids with titles and a colour bar, curves with
labelled axes and a legend inside, PNG and SVG files, and a clear error without matplotlib."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from torchcam_ops import viz

pytest.importorskip("matplotlib")


def test_overlay_keeps_the_images_size_and_aspect_ratio():
    image = Image.new("RGB", (90, 40), (10, 20, 30))
    saliency = torch.zeros(7, 7)
    saliency[3, 3] = 1.0
    blended = viz.overlay(image, saliency)
    assert isinstance(blended, Image.Image) and blended.size == (90, 40) and blended.mode == "RGB"
    # the peak lands at the centre of the image, where the resized map is largest
    hot = np.asarray(viz.overlay(image, saliency, colormap="gray", alpha=1.0)).sum(2)
    assert np.unravel_index(hot.argmax(), hot.shape) in {(19, 44), (19, 45), (20, 44), (20, 45)}


def test_overlay_blends_the_colour_map_by_alpha():
    import matplotlib

    image = np.full((4, 6, 3), 200, dtype=np.uint8)
    saliency = np.full((4, 6), 0.25, dtype=np.float32)
    expected_colour = np.asarray(matplotlib.colormaps["viridis"](0.25)[:3]) * 255
    blended = np.asarray(viz.overlay(image, saliency, colormap="viridis", alpha=0.3)).astype(np.float64)
    np.testing.assert_allclose(blended, np.broadcast_to(0.7 * 200 + 0.3 * expected_colour, blended.shape), atol=0.51)
    np.testing.assert_array_equal(np.asarray(viz.overlay(image, saliency, alpha=0.0)), image)


def test_overlay_accepts_tensors_and_float_arrays():
    image = torch.rand(3, 20, 30)
    blended = viz.overlay(image, torch.rand(1, 5, 5))
    assert blended.size == (30, 20)
    assert viz.overlay(np.random.rand(20, 30, 3), np.random.rand(5, 5)).size == (30, 20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"saliency": np.zeros((2, 3, 3))}, "saliency: expected one map"),
        ({"saliency": np.full((3, 3), np.nan)}, "NaN or infinite"),
        ({"alpha": 1.5}, "alpha: expected a value in"),
        ({"colormap": "no-such-map"}, "colormap: unknown"),
        ({"image": np.zeros((4, 4, 2))}, "image: expected"),
    ],
)
def test_overlay_refuses_bad_input(kwargs, message):
    arguments = {"image": np.zeros((8, 8, 3), np.uint8), "saliency": np.zeros((3, 3)), **kwargs}
    with pytest.raises(ValueError, match=message):
        viz.overlay(**arguments)


def test_grid_has_a_tile_per_image_and_method_and_a_colour_bar(tmp_path):
    images = [np.zeros((40, 60, 3), np.uint8), Image.new("RGB", (50, 50))]
    maps = {"gradcam": [np.random.rand(7, 7)] * 2, "hirescam": [np.random.rand(7, 7)] * 2}
    figure = viz.grid(images, maps, titles=["cat", "dog"])
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["cat", "gradcam", "hirescam", "dog", "gradcam", "hirescam"]
    assert any(axis.get_ylabel() == "saliency" for axis in figure.axes)  # the colour bar
    for suffix in (".png", ".svg"):
        path = viz.save(viz.grid(images, maps), tmp_path / f"grid{suffix}")
        assert path.stat().st_size > 1000
    assert (tmp_path / "grid.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="'gradcam' has 1 maps for 2 images"):
        viz.grid(images, {"gradcam": [np.zeros((3, 3))]})


def test_plot_curves_labels_axes_and_keeps_the_legend_inside(tmp_path):
    fractions = np.linspace(0, 1, 5)
    curves = {
        "gradcam": (fractions, 1 - fractions, fractions),
        "tsgb": (fractions, (1 - fractions) ** 2, fractions**0.5),
    }
    figure = viz.plot_curves(curves, title="photos")
    deletion, insertion = figure.axes
    assert deletion.get_xlabel() == "fraction of pixels" and insertion.get_ylabel() == "class probability"
    assert [text.get_text() for text in insertion.get_legend().get_texts()] == ["gradcam", "tsgb"]
    assert len(deletion.get_xticks()) > 2
    figure.canvas.draw()
    legend_box = insertion.get_legend().get_window_extent()
    figure_box = figure.bbox
    assert figure_box.x0 <= legend_box.x0 and legend_box.x1 <= figure_box.x1
    assert figure_box.y0 <= legend_box.y0 and legend_box.y1 <= figure_box.y1
    assert viz.save(figure, tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        viz.save(viz.plot_curves(curves), tmp_path / "curves.jpg")


def test_a_clear_error_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    # an install line that works: matplotlib itself, not an extra of a package no index has
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install \"matplotlib>=3.7\"") as error:
        viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)))
    assert "torchcam-ops[viz]" not in str(error.value)


def test_curves_of_many_methods_are_told_apart_by_colour_and_dash():
    fractions = np.linspace(0, 1, 5)
    curves = {f"method{i}": (fractions, fractions * 0 + i, fractions) for i in range(16)}
    figure = viz.plot_curves(curves)
    lines = figure.axes[0].get_lines()
    from matplotlib.colors import to_hex

    styles = {(to_hex(line.get_color()), line.get_linestyle()) for line in lines}
    assert len(lines) == 16 and len(styles) == 16


def _expected_overlay(photo_uint8: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    return np.asarray(viz.overlay(photo_uint8, saliency))


def test_the_image_types_users_have_are_drawn_as_the_same_picture():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    saliency = rng.random((3, 4))
    expected = _expected_overlay(photo, saliency)
    same = {
        "uint16": photo.astype(np.uint16) * 257,
        "int64 in [0, 255]": photo.astype(np.int64),
        "float in [0, 255]": photo.astype(np.float32),
        "float in [0, 1]": photo / 255.0,
        "torchvision uint8 [3, H, W]": torch.from_numpy(photo).permute(2, 0, 1).contiguous(),
        "float tensor [3, H, W]": torch.from_numpy(photo).permute(2, 0, 1).float() / 255,
        "bfloat16 tensor [3, H, W]": (torch.from_numpy(photo).permute(2, 0, 1).float() / 255).bfloat16(),
    }
    for name, image in same.items():
        got = np.asarray(viz.overlay(image, saliency))
        tolerance = 2 if "bfloat16" in name else 0  # bfloat16 keeps 8 bits of mantissa
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance, name


@pytest.mark.parametrize(
    "image,message",
    [
        (np.full((4, 4, 3), -1.5, np.float32), r"float values must lie in \[0, 1\] or \[0, 255\].*normalised"),
        (np.full((4, 4, 3), 300, np.int32), r"integer values must lie in \[0, 255\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite"),
    ],
    ids=["normalised input", "int beyond 255", "nan"],
)
def test_images_that_cannot_be_read_as_pictures_are_refused_clearly(image, message):
    with pytest.raises(ValueError, match=message):
        viz.overlay(image, np.zeros((2, 2)))
