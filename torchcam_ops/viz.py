"""Pictures of explanations: overlays, grids of images x methods, deletion/insertion curves.

Colour maps and figures come from matplotlib, an optional dependency (``pip install matplotlib``),
imported when a function here first needs it. ``overlay`` returns a PIL image; ``grid`` and
``plot_curves`` return matplotlib figures, which :func:`save` writes as PNG or SVG (by the file's suffix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["concepts", "grid", "overlay", "plot_curves", "png_bytes", "save"]


#: How to get what the pictures need, as it can really be installed (the package is not on an index).
MATPLOTLIB_INSTALL = 'pip install "matplotlib>=3.7" (or, in the checkout, pip install --no-build-isolation ".[viz]")'


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)  # files, not windows: works without a display
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"torchcam_ops.viz needs matplotlib: {MATPLOTLIB_INSTALL}") from err
    return plt


def require_matplotlib() -> None:
    """Raises the :func:`_pyplot` error now, for commands that would otherwise compute before drawing."""
    _pyplot()


def _colormap(name: str):
    plt = _pyplot()
    try:
        return plt.get_cmap(name)
    except ValueError as err:
        raise ValueError(f"colormap: unknown matplotlib colour map {name!r}") from err


def _rgb8(image: Any) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]`` from a PIL image, or an array or tensor ``[H, W]``,
    ``[H, W, 1|3|4]`` or (a tensor, channels first as torchvision's) ``[1|3|4, H, W]`` of uint8, uint16,
    other integers in [0, 255], bools, or floats in [0, 1] or in [0, 255] (read as 8-bit values when
    the largest exceeds 1). Anything else is refused, never drawn white."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # a torch tensor
        import torch

        tensor = image.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()  # numpy has no bfloat16
        array = tensor.numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected [H, W], [H, W, 3] or a [3, H, W] tensor, got shape {list(np.shape(image))}")
    array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]
    return _as_uint8(array)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array.astype(np.float64) / 257).round().astype(np.uint8)
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"image: integer values must lie in [0, 255] (or be uint16), got [{low}, {high}]")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image: the image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"image: float values must lie in [0, 1] or [0, 255], got [{low:.3g}, {high:.3g}] "
                "(a normalised model input? pass the image before normalisation)"
            )
        scale = 255.0 if high <= 1 else 1.0
        return np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    raise TypeError(f"image: expected an image of integers, bools or floats, got dtype {array.dtype}")


def _map2d(saliency: Any) -> np.ndarray:
    array = saliency.detach().float().cpu().numpy() if hasattr(saliency, "detach") else np.asarray(saliency)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"saliency: expected one map [h, w], got shape {list(np.shape(saliency))}")
    if not np.isfinite(array).all():
        raise ValueError("saliency: the map contains NaN or infinite values")
    return array.astype(np.float32)


def _resized(saliency: np.ndarray, width: int, height: int) -> np.ndarray:
    """The map resized bilinearly to ``width`` x ``height`` (kept in [0, 1])."""
    from PIL import Image

    if saliency.shape == (height, width):
        return saliency
    resized = np.asarray(Image.fromarray(saliency.astype(np.float32)).resize((width, height), Image.BILINEAR))
    return np.clip(resized, 0, 1)


def overlay(image: Any, saliency: Any, colormap: str = "jet", alpha: float = 0.5):
    """The map coloured with ``colormap`` and blended over the image at the image's own resolution and
    aspect ratio (the map, values in [0, 1], is resized to it): ``(1 - alpha) image + alpha colour``.

    Args:
        image: a PIL image, an array ``[H, W, 3]`` (uint8, or floats in [0, 1]) or a tensor ``[3, H, W]``.
        saliency: one map ``[h, w]`` in [0, 1] (array or tensor), e.g. an explainer's output for one image.
        colormap: a matplotlib colour map name.
        alpha: the weight of the colour, in [0, 1].

    Returns:
        A PIL RGB image of the image's size.
    """
    from PIL import Image

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    rgb = _rgb8(image)
    height, width = rgb.shape[:2]
    values = _resized(np.clip(_map2d(saliency), 0, 1), width, height)
    colour = _colormap(colormap)(values)[..., :3] * 255
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * colour
    return Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8))


def concepts(
    image: Any,
    maps: Any,
    labels: Sequence[str] | None = None,
    *,
    colormap: str = "gist_rainbow",
    alpha: float = 0.5,
):
    """Concept maps of one image (e.g. :class:`~torchcam_ops.methods.DeepFeatureFactorization`'s
    ``maps[n]``) drawn over it, one colour per concept: each pixel takes the colour of the concept
    whose map is largest there, darkened by that map's value, blended with the image; with
    ``labels``, a legend of the colours beside it.

    Args:
        image: a PIL image, an array ``[H, W, 3]`` or a tensor ``[3, H, W]``, as for :func:`overlay`.
        maps: the concepts' maps ``[C, h, w]`` in [0, 1] (array or tensor), resized to the image.
        labels: one text per concept (e.g. its top classes), or None for no legend.
        colormap: the matplotlib colour map the C colours are spaced along.
        alpha: the weight of the colours, in [0, 1].

    Returns:
        A PIL RGB image: the image's size, twice as wide with a legend.
    """
    from PIL import Image

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    array = maps.detach().float().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"maps: expected concept maps [C, h, w], got shape {list(array.shape)}")
    if labels is not None and len(labels) != array.shape[0]:
        raise ValueError(f"labels: expected {array.shape[0]} labels (one per concept), got {len(labels)}")
    rgb = _rgb8(image)
    height, width = rgb.shape[:2]
    resized = np.stack([_resized(np.clip(_map2d(m), 0, 1), width, height) for m in array])
    colours = _colormap(colormap)(np.arange(array.shape[0]) / array.shape[0])[:, :3]
    strongest = resized.argmax(0)
    painted = colours[strongest] * np.take_along_axis(resized, strongest[None], 0)[0][..., None] * 255
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * painted
    picture = Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8))
    if labels is None:
        return picture
    plt = _pyplot()
    from matplotlib.lines import Line2D

    figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    lines = [Line2D([0], [0], color=colour, lw=max(2.0, height / 50)) for colour in colours]
    figure.legend(lines, list(labels), loc="center", fontsize=max(6, min(14, height / 20 / max(1, len(labels) / 6))))
    legend = Image.fromarray(np.asarray(_figure_rgb(figure)))
    plt.close(figure)
    combined = Image.new("RGB", (2 * width, height), "white")
    combined.paste(picture, (0, 0))
    combined.paste(legend.resize((width, height)), (width, 0))
    return combined


def _figure_rgb(figure: Any) -> np.ndarray:
    """A matplotlib figure's pixels, ``[H, W, 3]`` uint8."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def grid(
    images: Sequence[Any],
    maps: Mapping[str, Sequence[Any]],
    *,
    titles: Sequence[str] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    tile_inches: float = 2.4,
):
    """A figure of images (rows) x methods (columns): the image itself, then its overlay per method,
    each tile titled, with one colour bar for the maps' [0, 1] scale.

    Args:
        images: the images (anything :func:`overlay` accepts), each shown at its own aspect ratio.
        maps: method name -> one map per image.
        titles: one title per image (its name, its class...); default "image 1", "image 2"...
        colormap, alpha: as for :func:`overlay`.
        tile_inches: the width of one tile.

    Returns:
        A matplotlib figure (write it with :func:`save`).
    """
    plt = _pyplot()
    if len(images) == 0:
        raise ValueError("images: expected at least one image")
    for method, per_image in maps.items():
        if len(per_image) != len(images):
            raise ValueError(f"maps: {method!r} has {len(per_image)} maps for {len(images)} images")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected {len(images)} titles, got {len(titles)}")
    titles = list(titles) if titles is not None else [f"image {i + 1}" for i in range(len(images))]
    rgbs = [_rgb8(image) for image in images]
    aspect = max(rgb.shape[0] / rgb.shape[1] for rgb in rgbs)
    columns = 1 + len(maps)
    figure, axes = plt.subplots(
        len(images),
        columns,
        figsize=(tile_inches * columns + 0.8, tile_inches * aspect * len(images) + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    for row, (rgb, title) in enumerate(zip(rgbs, titles)):
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(title, fontsize=9)
        for column, (method, per_image) in enumerate(maps.items(), 1):
            axes[row, column].imshow(overlay(rgb, per_image[row], colormap, alpha))
            axes[row, column].set_title(method, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    scale = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap=_colormap(colormap))
    figure.colorbar(scale, ax=axes, shrink=0.6, label="saliency")
    return figure


def plot_curves(curves: Mapping[str, tuple[Any, Any, Any]], *, title: str | None = None):
    """Deletion and insertion curves, one line per method, in two panels with labelled axes and the
    legend inside the figure.

    Args:
        curves: method name -> ``(fractions, deletion, insertion)``: the fraction of pixels removed or
            inserted at each step and the mean class probability there.
        title: an optional title above both panels.

    Returns:
        A matplotlib figure (write it with :func:`save`).
    """
    plt = _pyplot()
    if not curves:
        raise ValueError("curves: expected at least one method")
    figure, (deletion_axis, insertion_axis) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    # ten colours, then the same colours dashed, then dotted: up to 30 methods stay distinguishable
    styles = [(colour, dash) for dash in ("-", "--", ":") for colour in plt.get_cmap("tab10").colors]
    for i, (method, (fractions, deletion, insertion)) in enumerate(curves.items()):
        colour, dash = styles[i % len(styles)]
        for axis, values in ((deletion_axis, deletion), (insertion_axis, insertion)):
            axis.plot(np.asarray(fractions), np.asarray(values), dash, color=colour, label=method, linewidth=1.6)
    for axis, name in ((deletion_axis, "deletion (lower is better)"), (insertion_axis, "insertion (higher is better)")):
        axis.set_title(name)
        axis.set_xlabel("fraction of pixels")
        axis.set_ylabel("class probability")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    insertion_axis.legend(loc="lower right", fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def save(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    """Writes a figure of this module as PNG or SVG (by ``path``'s suffix) and closes it.

    Args:
        figure: a matplotlib figure, e.g. from :func:`grid` or :func:`plot_curves`.
        path: the file to write, ending in ``.png`` or ``.svg`` (in any case).
        dpi: the resolution in dots per inch (default 120).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` ends in neither ``.png`` nor ``.svg`` (nothing is written and the figure stays open).
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"path: expected a .png or .svg file, got {str(path)!r}")
    plt = _pyplot()
    try:
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)
    return path


def png_bytes(picture: Any, dpi: int = 110) -> bytes:
    """PNG bytes of a PIL image or of a figure of this module (closed afterwards), e.g. to embed in a page.

    Args:
        picture: a PIL image (e.g. from :func:`overlay`) or a matplotlib figure (e.g. from :func:`grid`).
        dpi: the resolution in dots per inch of a figure (default 110); a PIL image keeps its own pixels.

    Returns:
        The PNG file's bytes.
    """
    import io

    buffer = io.BytesIO()
    if hasattr(picture, "savefig"):
        plt = _pyplot()
        try:
            picture.savefig(buffer, format="png", dpi=dpi)
        finally:
            plt.close(picture)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()
