"""What a newcomer meets first: missing data and packages stop in one line before any work, each command
writes its own pages that say what ran, the demo's table times warmed-up calls, the build says which torch it
was made for, and the source distribution carries every file the build compiles."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import torchcam_ops
from torchcam_ops import _extension, cli, demo, viz

ROOT = Path(__file__).resolve().parents[1]


def _cli(*arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "torchcam_ops", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_missing_fashion_mnist_is_one_line_naming_the_package(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli(
        "evaluate",
        "--benchmark",
        "localization",
        "--count",
        "1",
        "--methods",
        "gradcam",
        "--out",
        str(tmp_path / "out"),
        env={"TORCHCAM_OPS_FASHION_MNIST": str(empty)},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"evaluate: Fashion-MNIST not found in {empty}")
    assert "apt-get install dataset-fashion-mnist" in lines[0]


@pytest.mark.parametrize("count", ["0", "-1"])
def test_count_must_be_positive(count, tmp_path):
    with pytest.raises(SystemExit, match=f"evaluate: --count: expected a positive number of canvases, got {count}"):
        cli.main(["evaluate", "--benchmark", "localization", "--count", count, "--out", str(tmp_path)])


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_without_matplotlib_the_cli_says_so_before_computing(command, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it looks like
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the missing package was reported")

    monkeypatch.setattr(cli, "_load_model", no_work)
    monkeypatch.setattr(cli, "_load_images", no_work)
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--methods", "gradcam", "--out", str(tmp_path)])
    message = str(stop.value)
    assert message.startswith(f"{command}: the pictures need matplotlib: pip install")
    assert "torchcam-ops[viz]" not in message  # no index has the package: name what installs
    assert not any(tmp_path.iterdir())


def test_each_command_writes_its_own_folder_and_its_page_says_what_ran(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    titles = []
    plot_curves = viz.plot_curves
    monkeypatch.setattr(viz, "plot_curves", lambda curves, title=None: titles.append(title) or plot_curves(curves))
    cli.main(["explain", "--methods", "gradcam", "--device", "cpu"])
    cli.main(["evaluate", "--benchmark", "localization", "--count", "1", "--methods", "gradcam", "--quiet"])

    explain_page = tmp_path / "torchcam-ops-out" / "explain" / "report.html"
    evaluate_page = tmp_path / "torchcam-ops-out" / "evaluate-localization" / "report.html"
    assert (explain_page.parent / "explain_grid.png").is_file()
    assert "torchcam-ops explain --methods gradcam --device cpu" in explain_page.read_text()
    assert "<h1>torchcam-ops explain</h1>" in explain_page.read_text()
    page = evaluate_page.read_text()
    assert "<h1>torchcam-ops evaluate</h1>" in page
    assert "torchcam-ops evaluate --benchmark localization --count 1 --methods gradcam --quiet" in page
    # the benchmark runs its own shipped network, not --model's default
    assert titles and all(title == "LocalizationNet, localization" for title in titles)
    assert "efficientnet_lite0" not in page


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["/somewhere/torchcam_ops/__main__.py", "explain", "a b.png"], ["python", "-m", "torchcam_ops", "explain"]),
        (["/venv/bin/torchcam-ops", "explain", "a b.png"], ["torchcam-ops", "explain"]),
    ],
)
def test_the_page_shows_the_command_as_typed(monkeypatch, argv, expected):
    monkeypatch.setattr(sys, "argv", argv)
    assert cli.command_line(None) == [*expected, "a b.png"]
    assert cli.command_line(["evaluate", "--count", "2"]) == ["torchcam-ops", "evaluate", "--count", "2"]


def test_demo_times_warmed_up_calls_in_alternation():
    calls = []
    first = lambda: calls.append("ops")
    second = lambda: calls.append("eager")
    ops_seconds, eager_seconds = demo.alternated_timings(first, second, repeats=3)
    assert calls == ["ops", "eager"] * 4  # one warm-up call each, then 3 alternated rounds
    assert ops_seconds >= 0 and eager_seconds >= 0


def test_demo_table_says_what_it_measures(capsys):
    demo.main(["--batch", "2", "--size", "16", "--device", "cpu", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "the median of 2 calls of each, in alternation, after one warm-up call each" in out
    assert all(method in out for method in torchcam_ops.CAM_METHODS)


def test_the_build_records_its_torch_beside_the_extension():
    import torch

    facts = json.loads((Path(torchcam_ops._C.__file__).parent / _extension.BUILD_FACTS).read_text())
    assert facts["torch"] == torch.__version__ and facts["version"] == torchcam_ops.__version__
    # why the CUDA kernels were left out, when they were
    assert (facts["no_cuda_kernels"] is None) == bool(torchcam_ops._C.with_cuda)


def test_an_extension_that_no_longer_loads_names_both_torch_versions(monkeypatch, tmp_path):
    import torch

    (tmp_path / _extension.BUILD_FACTS).write_text(json.dumps({"torch": "2.6.0", "version": "0.1.0"}))
    monkeypatch.setattr(_extension, "_PACKAGE_DIR", tmp_path)
    # what an extension with undefined symbols after a torch upgrade looks like to Python
    monkeypatch.delattr(torchcam_ops, "_C")
    monkeypatch.setitem(sys.modules, "torchcam_ops._C", None)
    with pytest.raises(ImportError) as info:
        _extension.load()
    message = str(info.value)
    assert f"the extension was built for torch 2.6.0, but torch {torch.__version__} is installed" in message
    assert "pip install --no-build-isolation" in message


def test_the_source_distribution_carries_every_file_the_build_compiles(tmp_path):
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (archive,) = tmp_path.glob("torchcam_ops-*.tar.gz")
    with tarfile.open(archive) as tar:
        members = {Path(name).relative_to(Path(name).parts[0]).as_posix() for name in tar.getnames()}
    sources = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("*.h", "*.cuh", "*.cpp", "*.cu")
        for path in (ROOT / "csrc").rglob(pattern)
    }
    assert sources and not sources - members, sorted(sources - members)
    expected = {"setup.py", "pyproject.toml", "README.md", "pytest_torchcam_ops.py", "tests/cpp/test_kernels.cpp"}
    assert not expected - members, sorted(expected - members)
    assert "torchcam_ops/data/localization_cnn.pt" in members
    assert not [name for name in members if name.endswith(".so")]
