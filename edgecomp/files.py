"""Atomic writes: every artifact goes to a temporary file in the same folder first.

A run killed at any moment leaves either the old file or the complete new one,
never a truncated file that looks valid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edgecomp.errors import EdgecompError


def write_bytes(path: str | Path, content: bytes) -> Path:
    """Writes ``content`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
    except OSError as error:
        raise EdgecompError(f"cannot write {path}: {error.strerror or error}; check the folder is writable "
                            "and the disk has space (output_dir)") from None
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def replace_dir(temp_dir: Path, final_dir: Path) -> None:
    """Moves a finished temporary folder into place, replacing any previous one."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(temp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp_dir, final_dir)
