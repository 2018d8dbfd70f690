"""Target layers whose outputs are not [N, K, h, w]: transformer tokens and channels-last blocks,
through ``reshape`` (the ViT and Swin agreement with pytorch-grad-cam is in test_peer_agreement.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchcam_ops.methods import METHODS, GradCAM, HiResCAM
from torchcam_ops.reference import reference_cam, reference_postprocess


class TinyTokens(nn.Module):
    """Patch embedding, an optional class token, one token-wise block, mean-pooled head."""

    def __init__(self, class_token: bool, grid: tuple[int, int] = (4, 4), channels: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.grid = grid
        self.embed = nn.Conv2d(3, channels, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, channels)) if class_token else None
        self.block = nn.Sequential(nn.Linear(channels, channels), nn.GELU())
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # [N, h*w, C]
        if self.class_token is not None:
            tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], 1)
        tokens = self.norm(self.block(tokens))
        return self.head(tokens.mean(1))


class TinyChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.embed(x).permute(0, 2, 3, 1))  # [N, h, w, C]
        return self.head(hidden.mean((1, 2)))


def gradcam_by_hand(model, layer, x, target, to_maps, method="gradcam"):
    """Grad-CAM of the layer's output turned into [N, C, h, w] by ``to_maps``, in float64."""
    outputs = []
    handle = layer.register_forward_hook(lambda m, i, o: outputs.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits[:, target].sum(), outputs[0])
    raw = reference_cam(to_maps(outputs[0].detach()), to_maps(gradient), method)
    return reference_postprocess(raw, tuple(x.shape[-2:]))


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_tokens_are_the_patch_grid_channels_first(class_token, method):
    model = TinyTokens(class_token).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    skip = 1 if class_token else 0
    expected = gradcam_by_hand(
        model, model.norm, x, 2, lambda t: t[:, skip:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2), method
    )
    cls = GradCAM if method == "gradcam" else HiResCAM
    maps = cls(model, ["norm"], reshape="tokens")(x, 2)
    assert float(expected.std()) > 0.05
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_tokens_of_a_rectangular_grid_need_the_grid():
    model = TinyTokens(True, grid=(2, 4)).double().eval()
    x = torch.rand(1, 3, 8, 16, dtype=torch.float64)
    expected = gradcam_by_hand(model, model.norm, x, 1, lambda t: t[:, 1:].reshape(1, 2, 4, 6).permute(0, 3, 1, 2))
    maps = GradCAM(model, ["norm"], reshape="tokens", grid=(2, 4))(x, 1)
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)
    # 1 + 8 tokens: 8 is not a square, 9 is (3 x 3 without a class token) but not this grid
    with pytest.raises(ValueError, match=r"target layer 'norm': 9 tokens do not fit grid=\(3, 4\)"):
        GradCAM(model, ["norm"], reshape="tokens", grid=(3, 4))(x, 1)


class TinyDistilled(TinyTokens):
    """DeiT's layout: a class token and a distillation token before the patches."""

    def __init__(self) -> None:
        super().__init__(True)
        self.distillation_token = nn.Parameter(torch.randn(1, 1, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        prefix = torch.cat([self.class_token, self.distillation_token], 1).expand(x.shape[0], -1, -1)
        tokens = self.norm(self.block(torch.cat([prefix, tokens], 1)))
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("grid", [None, (4, 4)])
def test_class_and_distillation_tokens_are_dropped(grid):
    model = TinyDistilled().double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = gradcam_by_hand(model, model.norm, x, 2, lambda t: t[:, 2:].reshape(1, 4, 4, 6).permute(0, 3, 1, 2))
    maps = GradCAM(model, ["norm"], reshape="tokens", grid=grid)(x, 2)
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_tokens_that_are_no_square_grid_ask_for_the_grid():
    model = TinyTokens(False, grid=(2, 4)).eval()
    with pytest.raises(ValueError, match="8 tokens are not a square grid of patches after a few class.*grid="):
        GradCAM(model, ["norm"], reshape="tokens")(torch.rand(1, 3, 8, 16), 1)


def test_channels_last_blocks():
    model = TinyChannelsLast().double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = gradcam_by_hand(model, model.norm, x, 3, lambda t: t.permute(0, 3, 1, 2))
    for reshape in ("channels_last", lambda t: t.permute(0, 3, 1, 2)):
        maps = GradCAM(model, ["norm"], reshape=reshape)(x, 3)
        torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)


def test_every_cam_explainer_takes_reshape():
    """Each explainer's maps with reshape='tokens' are those with the layout written out by hand, and
    are not flat."""
    model = TinyTokens(True).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def by_hand(tokens: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(tokens.shape[1] - 1)  # gig_cam+m's larger inputs have larger grids
        return tokens[:, 1:].reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)

    for name in METHODS:
        if name == "tsgb":
            continue  # input gradients: no target layer
        options = {"steps": 2} if name in ("integrated_gradcam", "gig_cam") else {}
        # Ablation-CAM zeroes channels in the layer's own layout: a callable cannot tell it where they are
        layouts = ("tokens",) if name == "ablationcam" else ("tokens", by_hand)
        maps = []
        for reshape in layouts:
            if name in ("randomcam", "smoothgradcam++", "sscam"):  # the same draws for every layout
                options = {**options, "generator": torch.Generator().manual_seed(0)}
            with METHODS[name](model, ["norm"], reshape=reshape, input_size=16, **options) as explainer:
                maps.append(explainer(x, [1, 3]))
        assert maps[0].shape == (2, 16, 16) and float(maps[0].std()) > 0.01, name
        torch.testing.assert_close(maps[0], maps[-1], rtol=0, atol=1e-6, msg=name)


def test_bad_layouts_are_refused_with_the_layer_and_the_shape():
    tokens, blocks = TinyTokens(True).eval(), TinyChannelsLast().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(
        ValueError,
        match=r"target layer 'norm': expected a 4-D \[N, K, h, w\] output, got shape "
        r"\[1, 17, 6\] \(pass reshape='tokens', 'channels_last' or a callable\)",
    ):
        GradCAM(tokens, ["norm"])(x, 0)
    with pytest.raises(
        ValueError, match=r"target layer 'norm': reshape='tokens' expects \[N, L, C\] tokens, got shape"
    ):
        GradCAM(blocks, ["norm"], reshape="tokens")(x, 0)
    with pytest.raises(ValueError, match=r"reshape='channels_last' expects \[N, h, w, C\], got shape \[1, 17, 6\]"):
        GradCAM(tokens, ["norm"], reshape="channels_last")(x, 0)
    with pytest.raises(TypeError, match="reshape: the callable must return a tensor"):
        GradCAM(tokens, ["norm"], reshape=lambda t: t.tolist())(x, 0)
    with pytest.raises(ValueError, match=r"after reshape=.*got shape \[1, 17, 6\]"):
        GradCAM(tokens, ["norm"], reshape=lambda t: t)(x, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reshape": "nhwc"}, "reshape: expected None, 'tokens'"),
        ({"reshape": 3}, "reshape: expected None, 'tokens'"),
        ({"grid": (4, 4)}, "grid: only used with reshape='tokens'"),
        ({"reshape": "tokens", "grid": (4, 0)}, r"grid: expected \(height, width\), two positive ints"),
        ({"reshape": "tokens", "grid": 16}, r"grid: expected \(height, width\)"),
    ],
)
def test_bad_reshape_options(options, message):
    with pytest.raises(ValueError, match=message):
        GradCAM(TinyTokens(True), ["norm"], **options)


TOKEN_FACTORY = """
import torch
from tests.test_reshape import TinyTokens


def factory():
    def preprocess(image):
        x = torch.tensor(image).permute(2, 0, 1).float() / 255
        return torch.nn.functional.interpolate(x[None], size=(16, 16), mode="bilinear")[0]

    return TinyTokens(True).eval(), preprocess, "norm"
"""


@pytest.fixture
def token_factory(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "token_factory.py").write_text(TOKEN_FACTORY)
    Image.new("RGB", (32, 24), (200, 40, 90)).save(tmp_path / "red.png")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_cli_reaches_the_layout_of_a_transformer_layer(token_factory):
    from torchcam_ops import cli

    out = token_factory / "out"
    image = str(token_factory / "red.png")
    command = ["explain", image, "--model", "token_factory:factory", "--methods", "gradcam,scorecam", "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"expected a 4-D \[N, K, h, w\] output, got shape \[1, 17, 6\]"):
        cli.main([*command, "--out", str(out)])
    cli.main([*command, "--reshape", "tokens", "--out", str(out)])
    assert (out / "red_gradcam.png").is_file() and (out / "red_scorecam.png").is_file()
    cli.main([*command, "--reshape", "tokens", "--grid", "4x4", "--out", str(out / "grid")])
    assert (out / "grid" / "red_gradcam.png").is_file()
    # --layer names another token layer than the factory's: the block's output, [1, 17, 6] too
    cli.main([*command, "--layer", "block", "--reshape", "tokens", "--out", str(out / "block")])
    assert (out / "block" / "red_gradcam.png").is_file()
    with pytest.raises(SystemExit, match=r"block.*expected a 4-D \[N, K, h, w\] output, got shape \[1, 17, 6\]"):
        cli.main([*command, "--layer", "block", "--out", str(out / "bad")])
    for grid, message in (("4", "--grid: expected HxW"), ("0x4", "--grid: expected HxW")):
        with pytest.raises(SystemExit, match=message):
            cli.main([*command, "--reshape", "tokens", "--grid", grid, "--out", str(out / "bad")])
    with pytest.raises(SystemExit, match="--grid: only used with --reshape tokens"):
        cli.main([*command, "--grid", "4x4", "--out", str(out / "bad")])
    with pytest.raises(SystemExit, match=r"17 tokens do not fit grid=\(3, 6\)"):
        cli.main([*command, "--reshape", "tokens", "--grid", "3x6", "--out", str(out / "bad")])
    assert not (out / "bad").exists()


def test_ablationcam_zeroes_a_channel_in_every_token():
    model = TinyTokens(True).double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        embedded = model.embed(x).flatten(2).transpose(1, 2)
        tokens = model.norm(model.block(torch.cat([model.class_token, embedded], 1)))  # [1, 17, 6]
        y = model.head(tokens.mean(1))[0, 1]
        weights = []
        for k in range(6):
            ablated = tokens.clone()
            ablated[:, :, k] = 0
            weights.append((y - model.head(ablated.mean(1))[0, 1]) / y)
    grid = tokens[0, 1:].reshape(4, 4, 6).permute(2, 0, 1)
    raw = torch.relu((torch.stack(weights)[:, None, None] * grid).sum(0))
    expected = reference_postprocess(raw[None], (16, 16))
    maps = METHODS["ablationcam"](model, ["norm"], reshape="tokens")(x, 1)
    assert float(expected.std()) > 0.05
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-9)
