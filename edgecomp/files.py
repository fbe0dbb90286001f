"""Atomic writes: every artifact goes to a temporary file in the same folder first.

A run killed at any moment leaves either the old file or the complete new one,
never a truncated file that looks valid. A write that fails because the folder is
read-only or not writable, or the disk is full, raises ``OutputError`` naming the
path, the cause and what to do; the temporary file is removed, so the previous
file (or none) remains. A killed process cannot remove its temporary files
(``.model.tflite.k3j2x9q1.tmp``); ``remove_stale_temporaries`` does, when the next
run starts in that folder.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from edgecomp.errors import OutputError

_ELSEWHERE = "choose another output_dir (or --json path)"
# errno → (cause, what to do), for the errors a user can fix.
WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on device", f"free space on that disk or {_ELSEWHERE}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space in your quota or {_ELSEWHERE}"),
    errno.EFBIG: ("file too large for this file system", _ELSEWHERE),
    errno.EROFS: ("read-only file system", _ELSEWHERE),
    errno.EACCES: ("permission denied", f"make the folder writable or {_ELSEWHERE}"),
    errno.EPERM: ("operation not permitted", f"make the folder writable or {_ELSEWHERE}"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", _ELSEWHERE),
    errno.EISDIR: ("it is a folder", "choose a file name"),
}
# Causes recognised in the text of another library's error (TensorFlow's event writer, h5py).
_TEXT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# The names of the temporary files and folders write_bytes and write_dir make (tempfile's
# mkstemp/mkdtemp with prefix ".<name>." and suffix ".tmp"): 8 random characters of
# [a-z0-9_] between them. Nothing else is matched, so nothing else is ever removed.
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def write_error(path: str | Path, error: OSError) -> OutputError:
    """The one-line ``OutputError`` for an ``OSError`` raised writing ``path``."""
    cause, fix = WRITE_ERRORS.get(error.errno, (error.strerror or str(error),
                                                "check the folder is writable and the disk has space"))
    return OutputError(f"cannot write {path}: {cause}; {fix}")


def disk_error(error: BaseException) -> Optional[OutputError]:
    """An ``OutputError`` for a disk error raised by any library, else None.

    ``OSError`` with a write errno (``ENOSPC``, ``EROFS``, ...), or any error whose
    text holds the system's message for a full or read-only disk: TensorFlow's
    event writer raises ``ResourceExhaustedError: <path>; No space left on device``.
    """
    if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
        return write_error(error.filename or "an output file", error)
    text = str(error)
    for code in _TEXT_ERRNOS:
        message = os.strerror(code)
        if message in text:
            found = re.search(r"(/[^\s;,'\"]+)['\"]?[;:,]?\s*" + re.escape(message), text)
            return write_error(found.group(1) if found else "an output file", OSError(code, message))
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, content: bytes) -> Path:
    """Writes ``content`` to ``path`` atomically (temp file, fsync, rename).

    The file gets the mode a plain ``open`` would give it (0644 under umask 022),
    not ``mkstemp``'s 0600: a web server, a Docker host or an Android build must
    be able to read what edgecomp wrote.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
                stream.flush()
                os.fchmod(stream.fileno(), 0o666 & ~_umask())
                os.fsync(stream.fileno())
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
    except OSError as error:
        raise write_error(path, error) from None
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_dir(folder: str | Path, contents: Mapping[str, bytes]) -> Path:
    """Writes a folder of files atomically: into a temporary sibling, renamed into place when complete.

    Args:
        folder: the folder to create or replace.
        contents: file name → bytes.

    Raises:
        OutputError: the folder cannot be written or the disk is full; the
            temporary folder is removed and any previous ``folder`` is kept.
    """
    folder = Path(folder)
    temp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        os.chmod(temp, 0o777 & ~_umask())   # mkdtemp's 0700 would hide the finished folder from other users
        for name, content in contents.items():
            with open(temp / name, "wb") as stream:
                stream.write(content)
                stream.flush()
                os.fsync(stream.fileno())
        replace_dir(temp, folder)
    except OSError as error:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise write_error(folder, error) from None
    return folder


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


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes what a killed run's atomic writes left under ``folder``; returns what was removed.

    Only names ``write_bytes`` and ``write_dir`` make (``TEMPORARY_NAME``: hidden,
    8 random characters, ``.tmp``) are touched: files, and folders (with their
    contents) that ``write_dir`` was filling. Symbolic links are neither followed
    nor removed. Call it before this process writes there: a write in progress in
    the same folder would lose its temporary file.
    """
    removed = []
    for parent, folders, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            if TEMPORARY_NAME.fullmatch(name) and not path.is_symlink() and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        for name in list(folders):
            path = Path(parent) / name
            if TEMPORARY_NAME.fullmatch(name) and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                folders.remove(name)  # gone: os.walk must not go into it
                removed.append(path)
    return sorted(removed)
