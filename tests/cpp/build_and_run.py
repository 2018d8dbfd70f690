"""Builds the GoogleTest binary for the raw-pointer kernels and runs it.

The kernels are compiled with the vector flags of the installed extension (its cpu_capability),
against the headers and libraries of the installed torch. The binary is rebuilt when a source or
header changed.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BINARY = HERE / "build" / "test_kernels"
sys.path.insert(0, str(ROOT))


def _cxx_standard() -> str:
    # The standard torch's own extension builder uses for these headers.
    return "-std=c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "-std=c++17"


def _capability_flags() -> list[str]:
    from torchcam_ops import _C

    if _C.cpu_capability == "AVX2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def build() -> Path:
    sources = [HERE / "test_kernels.cpp", *sorted((ROOT / "csrc" / "kernels").glob("*.h"))]
    if BINARY.exists() and all(BINARY.stat().st_mtime > s.stat().st_mtime for s in sources):
        return BINARY
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        "c++",
        _cxx_standard(),
        "-O2",
        "-ffp-contract=off",
        "-Wall",
        "-Wno-unknown-pragmas",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *_capability_flags(),
        *[f"-I{path}" for path in cpp_extension.include_paths()],
        str(HERE / "test_kernels.cpp"),
        "-o",
        str(BINARY),
        *[f"-L{path}" for path in cpp_extension.library_paths()],
        *[f"-Wl,-rpath,{path}" for path in cpp_extension.library_paths()],
        "-lgtest",
        "-lgtest_main",
        "-lc10",
        "-ltorch_cpu",
        "-pthread",
    ]
    subprocess.run(command, check=True)
    return BINARY


if __name__ == "__main__":
    sys.exit(subprocess.run([str(build()), *sys.argv[1:]]).returncode)
