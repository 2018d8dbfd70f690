"""Builds the GoogleTest binary for the raw-pointer kernels and runs it.

The kernels are compiled with the vector flags of the installed extension (its cpu_capability),
against the headers and libraries of the installed torch. The binary is rebuilt when a source or
header changed.

``--sanitize`` (or ``TORCHCAM_OPS_SANITIZE=address,undefined``) builds a second binary under
AddressSanitizer and UndefinedBehaviorSanitizer, which stops at the first out-of-bounds access or
undefined operation; the other arguments go to GoogleTest.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = HERE / "build"
sys.path.insert(0, str(ROOT))


def _cxx_standard() -> str:
    # The standard torch's own extension builder uses for these headers.
    return "-std=c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "-std=c++17"


def _capability_flags() -> list[str]:
    from torchcam_ops import _C

    if _C.cpu_capability == "AVX2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _sanitizer_flags(sanitizers: str) -> list[str]:
    if not sanitizers:
        return ["-O2"]
    return ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitizers}", "-fno-sanitize-recover=all"]


def build(sanitizers: str = "") -> Path:
    binary = BUILD / ("test_kernels" + (f"_{sanitizers.replace(',', '_')}" if sanitizers else ""))
    sources = [HERE / "test_kernels.cpp", HERE / "build_and_run.py", *sorted((ROOT / "csrc" / "kernels").glob("*.h"))]
    if binary.exists() and all(binary.stat().st_mtime > s.stat().st_mtime for s in sources):
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        "c++",
        _cxx_standard(),
        *_sanitizer_flags(sanitizers),
        "-ffp-contract=off",
        "-Wall",
        "-Wno-unknown-pragmas",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *_capability_flags(),
        *[f"-I{path}" for path in cpp_extension.include_paths()],
        str(HERE / "test_kernels.cpp"),
        "-o",
        str(binary),
        *[f"-L{path}" for path in cpp_extension.library_paths()],
        *[f"-Wl,-rpath,{path}" for path in cpp_extension.library_paths()],
        "-lgtest",
        "-lgtest_main",
        "-lc10",
        "-ltorch_cpu",
        "-pthread",
    ]
    subprocess.run(command, check=True)
    return binary


def main(argv: list[str]) -> int:
    sanitizers = os.environ.get("TORCHCAM_OPS_SANITIZE", "")
    if "--sanitize" in argv:
        argv = [a for a in argv if a != "--sanitize"]
        sanitizers = sanitizers or "address,undefined"
    env = dict(os.environ)
    if sanitizers:
        # LeakSanitizer needs ptrace, which containers often refuse; torch's own static state would
        # be reported anyway. Out-of-bounds accesses and undefined behaviour abort the run.
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        print(f"build_and_run: GoogleTest kernels under -fsanitize={sanitizers}", flush=True)
    return subprocess.run([str(build(sanitizers)), *argv], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
