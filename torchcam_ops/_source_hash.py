"""Hash of the C++/CUDA sources, computed the same way at build time (setup.py) and import time.

Standalone on purpose: setup.py loads this file directly, before the package can be imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_SUFFIXES = frozenset({".h", ".cpp", ".cu", ".cuh"})


def source_hash(csrc: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(csrc.rglob("*")):
        if path.suffix in SOURCE_SUFFIXES and path.is_file():
            digest.update(path.relative_to(csrc).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
