"""SESS: pytorch-grad-cam's SESS within 1e-4 in its options, the base CAM when there is one patch,
and its contracts."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_same_state, model_state, peer_cases, small_cnn
from torchcam_ops.methods import METHODS, SESS, GradCAM, LayerCAM


def cases(resnet18):
    return peer_cases(resnet18, "layer3", "5", (64, 80), (32, 40))


def test_one_patch_of_the_whole_image_is_the_base_map():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with SESS(model, ["5"], base="layercam", num_scales=1, smooth=False) as sess:
        ours = sess(x, [1, 4])
    with LayerCAM(model, ["5"]) as cam:
        expected = cam(x, [1, 4])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_several_classes_none_targets_and_the_models_state():
    model = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before = model_state(model)
    with METHODS["sess"](model, ["5"], num_scales=2) as sess:
        assert isinstance(sess, SESS)
        several = sess(x, torch.tensor([[1, 2], [4, 0]]))
        one = sess(x, [1, 4])
        top = sess(x)
        expected_top = sess(x, model(x).argmax(1))
        raw = sess(x, [1, 4], raw=True, output_size=16)
    assert several.shape == (2, 2, 32, 32) and raw.shape == (2, 32, 32)
    torch.testing.assert_close(several[:, 0], one)
    torch.testing.assert_close(top, expected_top)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool": "median"}, "pool: expected 'mean' or 'max'"),
        ({"pre_filter_ratio": 1.0}, r"pre_filter_ratio: expected a number in \[0, 1\)"),
        ({"num_scales": 0}, "num_scales: expected a positive int"),
        ({"window_size": 0}, "window_size: expected a positive int or None"),
        ({"scales": []}, "scales: expected a non-empty sequence"),
        ({"base": "tsgb"}, "base: 'tsgb' is not a CAM"),
        ({"base": "nope"}, "base: expected a method name"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        SESS(small_cnn(), ["5"], **options)


def test_bad_calls_are_refused_by_name():
    model = small_cnn().eval()
    x = torch.rand(1, 3, 32, 32)
    with (
        SESS(model, ["5"], scales=[16]) as sess,
        pytest.raises(ValueError, match="scales: every scale must be at least"),
    ):
        sess(x, [1])
    with GradCAM(model, ["5"]), SESS(model, ["5"]) as sess:
        with pytest.raises(ValueError, match="targets: SESS .* needs class indices"):
            sess(x, lambda logits: logits[:, 0])
        with pytest.raises(ValueError, match="targets: .*out of range for a model with 7 outputs"):
            sess(x, [99])
        with pytest.raises(ValueError, match="targets: .*out of range for a model with 7 outputs"):
            sess(x, torch.tensor([7]))


class TestAgainstPytorchGradCam:
    pgc = pytest.importorskip("pytorch_grad_cam")

    @pytest.mark.parametrize(
        "options",
        [
            {"num_scales": 3},
            {"num_scales": 4, "pool": "max", "step_size": 20, "pre_filter_ratio": 0.3},
            {"num_scales": 3, "theta": 0.2, "use_softmax_scores": False, "smooth": False},
            {"num_scales": 3, "step_size": 20, "pre_filter_ratio": 0.5, "theta": 0.1},
        ],
        ids=["defaults", "max_overlapping_prefiltered", "theta_logits_unsmoothed", "mean_prefiltered"],
    )
    @pytest.mark.parametrize("architecture", ["resnet18", "small_cnn"])
    def test_sess_agrees(self, resnet18, architecture, options):
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        model, layer, x = cases(resnet18)[architecture]
        module = dict(model.named_modules())[layer]
        expected = torch.from_numpy(
            self.pgc.SESS(model, [module], **options)(x, [ClassifierOutputTarget(c) for c in (3, 5)])
        )
        with SESS(model, [layer], **options) as sess:
            ours = sess(x, [3, 5])
        assert float(expected.std(dim=(1, 2)).max()) > 0.1
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
