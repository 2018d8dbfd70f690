"""The extension loads with the facts of its build, and a stale or mismatched build is refused
with instructions instead of a bare ImportError."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from torchcam_ops import _C, _extension


def test_build_facts():
    import torchcam_ops

    assert _C.torch_version == torch.__version__
    # the method names have one definition, kCamMethods in C++; Python reads them from the build
    assert torchcam_ops.CAM_METHODS == _C.cam_methods and "gradcam" in _C.cam_methods
    assert _C.cpu_capability in {"AVX2", "DEFAULT"}
    assert _C.with_cuda in {0, 1}


def test_every_op_is_registered_with_cpu_kernel_and_pt2_tag():
    def has_kernel(op, key):
        # a kernel for the device, or one written with ATen ops for every device
        return torch._C._dispatch_has_kernel_for_dispatch_key(
            op.name(), key
        ) or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeExplicitAutograd")

    for name in _extension.EXPECTED_OPS:
        op = getattr(torch.ops.torchcam_ops, name).default
        assert torch.Tag.pt2_compliant_tag in op.tags
        assert has_kernel(op, "CPU")
        if _C.with_cuda:
            assert has_kernel(op, "CUDA")


@pytest.mark.parametrize(
    "attribute,value,message",
    [
        ("source_hash", "0000000000000000", "the extension is stale"),
        ("torch_version", "1.0.0", "built against torch 1.0.0"),
    ],
)
def test_mismatched_build_is_refused_with_build_command(monkeypatch, attribute, value, message):
    monkeypatch.setattr(_C, attribute, value)
    monkeypatch.delenv("TORCHCAM_OPS_ALLOW_STALE_BUILD", raising=False)
    if attribute == "source_hash" and not _extension._SOURCE_DIR.is_dir():
        pytest.skip("installed without its sources: nothing to be stale against")
    with pytest.raises(ImportError, match=message) as info:
        _extension.load()
    assert "pip install --no-build-isolation" in str(info.value)


def test_stale_build_can_be_allowed(monkeypatch):
    monkeypatch.setattr(_C, "source_hash", "0000000000000000")
    monkeypatch.setenv("TORCHCAM_OPS_ALLOW_STALE_BUILD", "1")
    assert _extension.load() is _C


class TestNativeChecks:
    """The C++ entry points check their arguments too, for callers of torch.ops.torchcam_ops.*."""

    ops = torch.ops.torchcam_ops

    def test_cam_reduce(self):
        a = torch.rand(1, 2, 3, 3)
        with pytest.raises(ValueError, match="cam_reduce: unknown method 'nope'; expected one of 'gradcam'"):
            self.ops.cam_reduce.default(a, a, "nope")
        with pytest.raises(
            ValueError, match=r"cam_reduce: gradients must have the shape of activations \[1, 2, 3, 3\]"
        ):
            self.ops.cam_reduce.default(a, a[:, :1], "gradcam")
        with pytest.raises(TypeError, match="cam_reduce: gradients must have the dtype of activations"):
            self.ops.cam_reduce.default(a, a.double(), "gradcam")

    def test_cam_reduce_backward(self):
        a = torch.rand(1, 2, 3, 3)
        with pytest.raises(ValueError, match=r"cam_reduce_backward: grad_cam must have shape \[1, 3, 3\]"):
            self.ops.cam_reduce_backward.default(torch.rand(1, 3, 4), a, a, "gradcam")

    def test_cam_postprocess(self):
        with pytest.raises(ValueError, match="cam_postprocess: out_h and out_w must be >= 1, got 0 and 4"):
            self.ops.cam_postprocess.default(torch.rand(1, 3, 3), 0, 4)
        with pytest.raises(TypeError, match="cam_postprocess: cam must be float32"):
            self.ops.cam_postprocess.default(torch.ones(1, 3, 3, dtype=torch.int64), 4, 4)

    def test_tsgb_batch_norm_backward(self):
        x = torch.rand(2, 4, 3, 3)
        mean, var = torch.zeros(4), torch.ones(4)
        with pytest.raises(
            ValueError, match=r"tsgb_batch_norm_backward: weight must be \[C\] with C = 4, got shape \[5\]"
        ):
            self.ops.tsgb_batch_norm_backward.default(x, x, torch.ones(5), None, mean, var, 1e-5)
        with pytest.raises(ValueError, match="tsgb_batch_norm_backward: running_mean and running_var must be"):
            self.ops.tsgb_batch_norm_backward.default(x, x, None, None, mean[:3], var, 1e-5)

    def test_cam_postprocess_backward(self):
        with pytest.raises(ValueError, match=r"cam_postprocess_backward: grad_out must have shape \[1, 4, 4\]"):
            self.ops.cam_postprocess_backward.default(torch.rand(1, 4, 5), torch.rand(1, 3, 3), 4, 4, True, True)


def test_without_a_usable_build_the_package_imports_and_the_first_op_call_says_why(tmp_path):
    # A process where the extension cannot load: the package imports, the metrics work, an op call
    # raises the build error, and the pytest plugin module imports neither torch nor the package.
    script = textwrap.dedent("""
        import sys
        sys.modules["torchcam_ops._C"] = None  # what a missing or broken build looks like to Python
        import pytest_torchcam_ops
        assert "torch" not in sys.modules and "torchcam_ops" not in sys.modules, sorted(sys.modules)
        import torch
        import torchcam_ops
        from torchcam_ops.metrics import energy_pointing_game
        maps = torch.zeros(1, 4, 4); maps[0, 1, 1] = 1.0
        masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, :2, :2] = True
        assert float(energy_pointing_game(maps, masks)[0]) == 1.0
        try:
            torchcam_ops.cam_reduce(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), "gradcam")
        except ImportError as error:
            print(type(error).__name__, error)
        else:
            raise SystemExit("no error")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ExtensionBuildError torchcam_ops: the native extension torchcam_ops._C could not be loaded" in result.stdout
    assert "Build the extension with:" in result.stdout


def _shared_library(tmp_path, name: str, *flags: str):
    import shutil
    import subprocess

    compiler = shutil.which("g++")
    if compiler is None or shutil.which("nm") is None:
        pytest.skip("needs g++ and nm")
    source = tmp_path / "describe.cpp"
    source.write_text(
        "#include <sstream>\n#include <string>\n"
        "std::string describe(long v) { std::ostringstream out; out << v; return out.str(); }\n"
    )
    library = tmp_path / name
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", *flags, str(source), "-o", str(library)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"this g++ cannot link {flags}: {result.stderr.decode()[-200:]}")
    return library


def test_link_check_finds_a_private_libstdcxx_and_passes_this_build(tmp_path):
    # The build that killed the interpreter on its first error message defined the stream code
    # itself; the check that setup.py runs after every build refuses such a library.
    from torchcam_ops._link_check import private_stream_symbols

    assert private_stream_symbols(_shared_library(tmp_path, "static.so", "-static-libstdc++"))
    assert private_stream_symbols(_shared_library(tmp_path, "shared.so")) == []
    assert private_stream_symbols(_C.__file__) == []


def test_a_native_error_message_with_numbers_raises_in_a_fresh_process():
    # Where a badly linked build dies; the session start runs the same probe and stops the session
    # with the fix instead of letting the first error-path test kill it.
    from tests.conftest import native_error_probe

    result = native_error_probe()
    assert result.returncode == 0, f"the child died (status {result.returncode}):\n{result.stderr[-2000:]}"
    assert "ValueError cam_postprocess: out_h and out_w must be >= 1, got 0 and 4" in result.stdout


def _fresh_process(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)


def test_import_registers_the_ops_in_a_fresh_process():
    # torchvision's convention: the package import alone makes torch.ops.<namespace>.* callable.
    result = _fresh_process("""
        import torch
        import torchcam_ops
        x = torch.rand(2, 3, 4, 4)
        cam = torch.ops.torchcam_ops.cam_reduce(x, x, "gradcam")
        assert cam.shape == (2, 4, 4), cam.shape
        assert "torchcam_ops.methods" not in __import__("sys").modules  # explainers load on first use
        print("registered")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered" in result.stdout


def test_an_exported_program_with_our_ops_loads_after_import_in_a_fresh_process(tmp_path):
    saved = tmp_path / "program.pt2"
    export = _fresh_process(f"""
        import torch
        import torchcam_ops

        class Saliency(torch.nn.Module):
            def forward(self, activations, gradients):
                return torchcam_ops.cam_postprocess(torchcam_ops.cam_reduce(activations, gradients, "layercam"), (8, 8))

        a, g = torch.rand(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
        torch.export.save(torch.export.export(Saliency(), (a, g)), {str(saved)!r})
        torch.save((a, g, Saliency()(a, g)), {str(tmp_path / "io.pt")!r})
    """)
    assert export.returncode == 0, export.stderr[-3000:]
    load = _fresh_process(f"""
        import torch
        import torchcam_ops
        program = torch.export.load({str(saved)!r})
        a, g, expected = torch.load({str(tmp_path / "io.pt")!r})
        torch.testing.assert_close(program.module()(a, g), expected, rtol=0, atol=0)
        print("loaded")
    """)
    assert load.returncode == 0, load.stderr[-3000:]
    assert "loaded" in load.stdout
