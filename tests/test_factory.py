"""The ``--model module:factory`` contract: preprocess written for numpy, PIL or tensors, torchvision
transforms (v1 and v2) whose crop the overlays follow, a layer given as a module, and one-line errors."""

from __future__ import annotations

import argparse
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchcam_ops import cli, factory

transforms = pytest.importorskip("torchvision.transforms")
transforms_v2 = pytest.importorskip("torchvision.transforms.v2")

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()


FACTORIES = textwrap.dedent("""
    import numpy as np
    import torch
    from torchvision import transforms
    from torchvision.transforms import v2

    from tests.test_factory import MEAN, STD, tiny_cnn


    def cropping():
        preprocess = transforms.Compose(
            [transforms.Resize(32), transforms.CenterCrop(24), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        )
        return tiny_cnn(), preprocess, "0"


    def version_two():
        preprocess = v2.Compose([v2.ToImage(), v2.Resize((20, 20)), v2.ToDtype(torch.float32, scale=True)])
        model = tiny_cnn()
        return model, preprocess, model[0]


    def tensor_only():
        def preprocess(image):
            if not isinstance(image, torch.Tensor):
                raise TypeError("expected a tensor")
            return torch.nn.functional.interpolate(image[None].float() / 255, size=(16, 16))[0]

        return tiny_cnn(), preprocess, "0"


    def not_resizing():
        return tiny_cnn(), lambda image: torch.tensor(image).permute(2, 0, 1).float() / 255, "0"


    def numpy_output():
        return tiny_cnn(), lambda image: np.zeros((3, 8, 8), np.float32), "0"


    def no_layer():
        return tiny_cnn(), transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()]), None


    def plain_no_layer():
        def preprocess(image):
            x = torch.tensor(image).permute(2, 0, 1).float() / 255
            return torch.nn.functional.interpolate(x[None], size=(16, 16))[0]

        return tiny_cnn(), preprocess, None


    def foreign_layer():
        return tiny_cnn(), lambda image: torch.zeros(3, 8, 8), torch.nn.Conv2d(3, 3, 1)
""")


@pytest.fixture
def photos(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    generator = np.random.default_rng(0)
    Image.fromarray(generator.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(generator.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(tmp_path / "square.png")
    return tmp_path


def explain(photos, factory_name: str, *images: str) -> None:
    paths = [str(photos / name) for name in images or ("wide.png", "square.png")]
    out = photos / f"out-{factory_name}"
    cli.main(["explain", *paths, "--model", f"my_factories:{factory_name}", "--methods", "gradcam", "--out", str(out)])
    return out


def test_a_torchvision_compose_with_a_crop_draws_the_maps_on_the_cropped_region(photos):
    out = explain(photos, "cropping")
    # wide 30 x 40: Resize(32) -> 32 x 42, CenterCrop(24) keeps rows 4..27 and columns 9..32 of that:
    # 22.5 x 22.9 photo pixels from (3.75, 8.6); the overlay has the crop's size, not the photo's
    assert Image.open(out / "wide_gradcam.png").size == (23, 22)
    assert Image.open(out / "square_gradcam.png").size == (27, 27)  # 36 * 24 / 32


def test_torchvision_v2_transforms_get_a_pil_image_and_the_layer_may_be_a_module(photos):
    out = explain(photos, "version_two")
    assert Image.open(out / "wide_gradcam.png").size == (40, 30)  # a plain resize keeps the whole photo


def test_a_factory_without_a_layer_gets_the_one_found_on_the_first_photo(photos, capsys):
    out = explain(photos, "no_layer")
    assert "target layer: 1 (found: the factory names none" in capsys.readouterr().out
    assert (out / "wide_gradcam.png").is_file()


def test_a_preprocess_for_tensors_gets_a_uint8_tensor(photos):
    preprocess = factory.load("my_factories:tensor_only")[1]
    x = preprocess(np.zeros((30, 40, 3), np.uint8))
    assert preprocess.kind == "tensor" and x.shape == (3, 16, 16)
    explain(photos, "tensor_only")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_resizing", r"preprocess gave inputs of different sizes \(wide \[3, 30, 40\], square \[3, 36, 36\]\)"),
        ("numpy_output", r"preprocess took no kind of photo to a float tensor \[3, H, W\] \(numpy: returned ndarray"),
        ("foreign_layer", r"target layer Conv2d is not a submodule of its model"),
    ],
)
def test_contract_breaches_are_one_line_errors(photos, name, message):
    with pytest.raises(SystemExit, match=message) as exit_info:
        explain(photos, name)
    assert "\n" not in str(exit_info.value.code)
    assert not (photos / f"out-{name}").exists()


def test_the_photo_benchmark_refuses_a_cropping_preprocess(photos):
    with pytest.raises(SystemExit, match="the factory's preprocess crops the photo"):
        cli.main(["evaluate", "--model", "my_factories:cropping", "--out", str(photos / "evaluate")])


def test_the_seen_region_by_hand():
    # 300 x 400: Resize(256) -> 256 x 341 (int(256 * 400 / 300)); CenterCrop(224) starts at row 16 and
    # column round(58.5) = 58; in photo pixels: rows 16 * 300/256 = 18.75, columns 58 * 400/341 = 68.04,
    # 224 * 300/256 = 262.5 rows and 224 * 400/341 = 262.76 columns
    assert factory.seen_region(cropping_like(256, 224), 300, 400) == (19, 68, 262, 263)
    assert factory.seen_region(transforms.Resize((50, 60)), 300, 400) == (0, 0, 300, 400)
    assert factory.seen_region(lambda image: image, 300, 400) is None
    with pytest.warns(RuntimeWarning, match="RandomHorizontalFlip moves pixels"):
        assert factory.seen_region(
            transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()]), 30, 40
        ) == (0, 0, 30, 40)


def cropping_like(resize: int, crop: int):
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()])


def test_the_layer_name_of_a_module():
    model = tiny_cnn()
    assert factory.layer_name(model, model[0]) == "0" and factory.layer_name(model, "4") == "4"
    with pytest.raises(factory.FactoryError, match="must be a layer name or a module, got int"):
        factory.layer_name(model, 3)


def test_the_kind_found_on_the_first_photo_is_kept():
    calls = []

    def pil_only(image):
        calls.append(type(image).__name__)
        if not isinstance(image, Image.Image):
            raise TypeError("a PIL image, please")
        return torch.zeros(3, 4, 4)

    preprocess = factory.Preprocess(pil_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess(np.zeros((5, 5, 3), np.uint8))
        preprocess(np.zeros((5, 5, 3), np.uint8))
    # every kind on the first photo, the one found on the next
    assert preprocess.kind == "PIL" and calls == ["ndarray", "Image", "Tensor", "Image"]


def test_a_v2_pipeline_wrapped_in_a_function_is_given_the_kind_it_resizes():
    pipeline = transforms_v2.Compose(
        [transforms_v2.Resize((20, 20)), transforms_v2.ToImage(), transforms_v2.ToDtype(torch.float32, scale=True)]
    )
    preprocess = factory.Preprocess(lambda image: pipeline(image))  # a numpy array passes v2's Resize by
    assert pipeline(np.zeros((30, 40, 3), np.uint8)).shape == (3, 30, 40)
    assert preprocess(np.zeros((30, 40, 3), np.uint8)).shape == (3, 20, 20) and preprocess.kind == "PIL"


def test_evaluate_takes_a_plain_function_and_finds_a_layer_the_factory_does_not_name(photos, monkeypatch, capsys):
    from torchcam_ops import evaluation

    seen = {}

    def stop(model, preprocess, layer, name):
        seen["layer"] = layer
        raise SystemExit("stopped before the benchmark")

    monkeypatch.setattr(evaluation, "photos_benchmark", stop)
    with pytest.raises(SystemExit, match="stopped before the benchmark"):
        cli.main(["evaluate", "--model", "my_factories:plain_no_layer", "--out", str(photos / "evaluate")])
    assert seen["layer"] == "1" and "target layer: 1 (found" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_the_help_names_every_option_its_default_the_methods_and_the_factory_contract(command, capsys):
    from torchcam_ops.methods import METHODS

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    parser_actions = cli.build_parser()._subparsers._group_actions[0].choices[command]._actions
    for action in parser_actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS):
            assert "default" in action.help, f"{command} {action.option_strings} does not say its default"
    assert all(name in text for name in METHODS)
    assert factory.CONTRACT in text and "examples:" in text


def test_the_top_level_help_has_no_markup(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "explain" in text and "examples:" in text
