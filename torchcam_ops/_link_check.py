"""Refuse an extension that carries its own copy of the C++ standard library's streams.

A compiler that links libstdc++ statically into the extension (some CUDA images' default GCC does)
gives it private definitions of ``std::basic_ostream``, ``std::locale`` and ``std::ios_base``. The
first error message that formats a number then runs the private stream code on torch's locale
objects and kills the interpreter (seen as a segfault inside ``c10::str`` in a ``TORCH_CHECK``).
Standalone on purpose: setup.py loads this file before the package can be imported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# Defined only by a libstdc++ linked into the library itself: a build against the shared libstdc++
# references them (nm "U") but never defines them.
_PRIVATE_STREAM_SYMBOL = re.compile(
    r"^std::(locale::locale\(\)|ios_base::Init::Init\(\)|basic_ostream<char, std::char_traits<char> >::_M_insert<)"
)

FIX = (
    "rebuild with the system C++ compiler, which links the shared libstdc++ "
    "(e.g. CXX=g++ pip install --no-build-isolation -e .)"
)


def private_stream_symbols(library: str | Path) -> list[str]:
    """Standard-stream symbols that ``library`` defines itself; [] for a sound build.

    [] too where ``nm`` is not installed (nothing can be checked then).
    """
    nm = shutil.which("nm")
    if nm is None:
        return []
    listing = subprocess.run(
        [nm, "-C", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    names = (line.split(" ", 2)[2] for line in listing.splitlines() if line.count(" ") >= 2)
    return sorted({name for name in names if _PRIVATE_STREAM_SYMBOL.match(name)})
