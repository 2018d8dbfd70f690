"""Build torchcam_ops._C: C++ sources always, CUDA sources whenever a CUDA toolkit is usable.

Environment switches:
  TORCHCAM_OPS_DISABLE_CUDA=1       build without the CUDA kernels even where nvcc is present.
  TORCHCAM_OPS_CPU_CAPABILITY=...   AVX2 or DEFAULT vector code for the CPU kernels (default: AVX2 on an
                                    x86-64 machine whose CPU has it, else DEFAULT).
  TORCH_CUDA_ARCH_LIST              CUDA architectures (default "9.0", the H100).
  MAX_JOBS                          parallel compile jobs (ninja).
  TORCHCAM_OPS_SANITIZE=...         compile the C++ sources with -fsanitize=... (e.g. "address,undefined"),
                                    -O1 -g; load the result with the sanitizer runtime preloaded
                                    (LD_PRELOAD=$(c++ -print-file-name=libasan.so)). CI runs the kernels
                                    under the sanitizers through tests/cpp/build_and_run.py --sanitize.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
# Beside the built extension: the torch it was built for (read by torchcam_ops/_extension.py).
BUILD_FACTS = "_C_build.json"
# The version lives in torchcam_ops/__init__.py only; pyproject.toml reads it from there too.
VERSION = ast.literal_eval(
    next(
        line.split("=", 1)[1].strip()
        for line in (ROOT / "torchcam_ops" / "__init__.py").read_text().splitlines()
        if line.startswith("__version__ =")
    )
)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _nvcc_version(nvcc: Path) -> str | None:
    """The CUDA release of an nvcc ("13.0"), or None when it cannot be read."""
    try:
        output = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", output)
    return match.group(1) if match else None


@functools.cache
def _why_no_cuda_kernels() -> str | None:
    """None when the CUDA kernels are built, else the reason (also recorded beside the extension)."""
    if _env_flag("TORCHCAM_OPS_DISABLE_CUDA"):
        return "TORCHCAM_OPS_DISABLE_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a build without CUDA"
    nvcc = Path(CUDA_HOME) / "bin" / "nvcc" if CUDA_HOME else None
    if nvcc is None or not nvcc.exists():
        return "no CUDA toolkit (nvcc) was found"
    # torch refuses to compile CUDA sources with a toolkit of another major release than its own:
    # build the CPU kernels, which work with any toolkit, instead of failing the whole install.
    toolkit = _nvcc_version(nvcc)
    if toolkit is None or toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
        reason = (
            f"the CUDA toolkit in {CUDA_HOME} is release {toolkit}, torch {torch.__version__} was built with "
            f"CUDA {torch.version.cuda}; point CUDA_HOME at a matching toolkit for the CUDA kernels"
        )
        print(f"torchcam_ops: building the CPU kernels only: {reason}", file=sys.stderr)
        return reason
    return None


def _cuda_available_for_build() -> bool:
    return _why_no_cuda_kernels() is None


def _cpu_capability() -> str:
    requested = os.environ.get("TORCHCAM_OPS_CPU_CAPABILITY", "").strip().upper()
    if requested in {"AVX2", "DEFAULT"}:
        return requested
    if requested:
        raise ValueError(f"TORCHCAM_OPS_CPU_CAPABILITY must be AVX2 or DEFAULT, got {requested!r}")
    if platform.machine().lower() in {"x86_64", "amd64"}:
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        if " avx2" in flags and " fma" in flags and " f16c" in flags:
            return "AVX2"
    return "DEFAULT"


def _package_file(name: str):
    """A standalone module of the package, loaded before the package itself can be imported."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "torchcam_ops" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source_hash() -> str:
    """Hash of the C++/CUDA sources, checked at import time to detect a stale build."""
    return _package_file("_source_hash").source_hash(CSRC)


def _openmp_link_args() -> list[str]:
    """Link the OpenMP runtime torch itself loads: two runtimes in one process break thread pools.

    Wheels ship theirs in torch/lib (sometimes under a hashed name); otherwise torch uses the
    compiler's, which -fopenmp links.
    """
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    bundled = sorted(torch_lib.glob("libgomp*.so*"))
    if bundled:
        return [str(bundled[0]), f"-Wl,-rpath,{torch_lib}"]
    return ["-fopenmp"]


def _extension():
    with_cuda = _cuda_available_for_build()
    capability = _cpu_capability()
    sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "ops").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu").glob("*.cpp"))
    # Build facts go to a generated header that only csrc/ops/library.cpp includes, so a new
    # source hash recompiles that file alone and the build stays incremental.
    generated = ROOT / "build" / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    build_info = (
        "#pragma once\n"
        f'#define TORCHCAM_OPS_VERSION "{VERSION}"\n'
        f'#define TORCHCAM_OPS_SOURCE_HASH "{_source_hash()}"\n'
        f'#define TORCHCAM_OPS_TORCH_VERSION "{torch.__version__}"\n'
        f'#define TORCHCAM_OPS_CPU_CAPABILITY "{capability}"\n'
    )
    header = generated / "torchcam_ops_build_info.h"
    if not header.exists() or header.read_text() != build_info:
        header.write_text(build_info)
    defines = [f"-I{generated}"]
    # -ffp-contract=off: no fused multiply-adds behind our back, so the scalar and vector paths of a
    # kernel round identically (the backward of min-max relies on recomputing the same values).
    # -fopenmp: at::parallel_for is inline and parallelises with OpenMP pragmas when torch uses
    # OpenMP; without the flag those pragmas compile to a serial loop.
    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    cxx = ["-O3", "-ffp-contract=off", "-Wno-unknown-pragmas", *openmp, *defines]
    link = _openmp_link_args() if openmp else []
    sanitizers = os.environ.get("TORCHCAM_OPS_SANITIZE", "").strip()
    if sanitizers:
        sanitize = [f"-fsanitize={sanitizers}", "-fno-omit-frame-pointer", "-g"]
        cxx = [flag for flag in cxx if flag != "-O3"] + ["-O1", *sanitize]
        link = [*link, *sanitize]
    if capability == "AVX2":
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        cxx += ["-DCPU_CAPABILITY=DEFAULT"]
    if not with_cuda:
        return CppExtension("torchcam_ops._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-DTORCHCAM_OPS_WITH_CUDA", *defines]
    return CUDAExtension(
        "torchcam_ops._C",
        sources,
        extra_compile_args={"cxx": [*cxx, "-DTORCHCAM_OPS_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=link,
    )


class _CheckedBuildExtension(BuildExtension):
    """BuildExtension that keeps its objects in one folder per configuration and refuses an
    extension with its own copy of libstdc++'s streams.

    The fixed object folder lets an editable install (whose build folder is otherwise a new
    temporary one each time) and ``setup.py build_ext --inplace`` share one incremental ninja build.
    A build that links libstdc++ statically crashes the interpreter on its first C++ error message;
    see torchcam_ops/_link_check.py.
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        flavour = "cuda" if _cuda_available_for_build() else "cpu"
        sanitizers = os.environ.get("TORCHCAM_OPS_SANITIZE", "").strip()
        parts = ["objects", flavour, _cpu_capability().lower()] + ([f"sanitize-{sanitizers}"] if sanitizers else [])
        self.build_temp = str(ROOT / "build" / "-".join(parts).replace(",", "-"))

    def build_extension(self, ext) -> None:
        super().build_extension(ext)
        self._write_build_facts(ext)
        link_check = _package_file("_link_check")
        library = Path(self.get_ext_fullpath(ext.name))
        private = link_check.private_stream_symbols(library)
        if private:
            library.unlink()
            compiler = os.environ.get("CXX", "the default C++ compiler")
            raise SystemExit(
                f"torchcam_ops: {library.name} was built with its own copy of the C++ standard library "
                f"(it defines {', '.join(private[:3])}; compiler: {compiler}). Such a build kills the "
                f"interpreter on its first error message, so it was removed: {link_check.FIX}."
            )

    def _write_build_facts(self, ext) -> None:
        """Writes which torch the extension was built for beside it, so that an extension that no
        longer loads (undefined symbols after torch changed) can still say why."""
        facts = {"torch": torch.__version__, "version": VERSION, "no_cuda_kernels": _why_no_cuda_kernels()}
        library = Path(self.get_ext_fullpath(ext.name))
        folders = {library.parent}
        if self.inplace or getattr(self, "editable_mode", False):
            folders.add(ROOT / "torchcam_ops")  # where an editable install loads it from
        for folder in folders:
            (folder / BUILD_FACTS).write_text(json.dumps(facts) + "\n")


def _cmdclass():
    use_ninja = shutil.which("ninja") is not None
    return {"build_ext": _CheckedBuildExtension.with_options(use_ninja=use_ninja)}


setup(ext_modules=[_extension()], cmdclass=_cmdclass())
