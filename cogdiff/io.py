"""Crash-safe file writes and hashing shared by the whole package.

Every writer here builds the file under a temporary name in the destination folder
(``<name>.tmp-<pid>-<random>``), flushes and fsyncs it, then renames it over the destination with
``os.replace`` — so a reader sees the old file or the new one, never half of one. A crash leaves at
most a temporary file, which :func:`remove_stale_temporaries` can clean up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Dict, Iterator, List

import numpy as np

TMP_MARK = ".tmp-"
# Image files read by every image-folder reader in cogdiff (datasets, latent extraction, metrics, run folders);
# matched case-insensitively (the same list as torchvision's IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask."""
    try:  # Linux: read the umask without changing it (os.umask would, briefly, for every thread)
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def give_usual_permissions(folder) -> None:
    """Give every file under ``folder`` the mode of a new file (safetensors 0.8's writer makes its files
    private, 0600, whatever the umask)."""
    mode = new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding=None) -> Iterator:
    """``with atomic_open(path, "w") as f: ...`` writes ``path`` atomically (nothing changes on error)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + TMP_MARK)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes the file private; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_savez(path, **arrays) -> None:
    """``np.savez`` (no pickles) written atomically."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` (no pickles); a truncated or corrupt file is a one-line ``ValueError`` naming it
    (a missing one stays ``FileNotFoundError``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError) as e:
        raise ValueError(f"{os.fspath(path)} is truncated or not a valid .npz ({type(e).__name__}: {e}); "
                         "write it again (or point to another file)") from None


def atomic_save_npy(path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def atomic_save_with(path, save: Callable[[str], None], suffix: str = "") -> None:
    """For writers that need a file name (PIL, matplotlib): ``save(tmp_name)`` then rename.
    ``suffix`` keeps an extension on the temporary name for writers that read the format from it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + TMP_MARK, suffix=suffix)
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def remove_stale_temporaries(folder, stems=None) -> List[str]:
    """Delete temporaries left by a killed writer in ``folder`` (only names with ``TMP_MARK``;
    restricted to ``stems`` — destination base names — when given). Returns the names removed."""
    removed = []
    for name in os.listdir(folder):
        if TMP_MARK not in name:
            continue
        if stems is not None and not any(name.startswith(s + TMP_MARK) for s in stems):
            continue
        os.remove(os.path.join(folder, name))
        removed.append(name)
    return removed


def fsync_tree(directory) -> None:
    """fsync every file under ``directory`` and the folders themselves."""
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def fsync_dir(directory) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_dir(path, tmp_prefix: str = ".tmp_") -> None:
    """Delete a folder, renaming it to a temporary name first so that it never looks complete half-deleted."""
    doomed = os.path.join(os.path.dirname(os.fspath(path)), f"{tmp_prefix}del_{os.path.basename(path)}_{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def atomic_replace_dir(tmp, final, tmp_prefix: str = ".tmp_") -> None:
    """Make the finished folder ``tmp`` (in the same parent) become ``final``: fsync it, move an old ``final``
    out of the way, rename, fsync the parent. A crash leaves the old folder or the new one under ``final``
    (or, between the two renames, none: readers then see no complete folder, never half of one)."""
    fsync_tree(tmp)
    if os.path.exists(final):
        remove_dir(final, tmp_prefix)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))  # make the rename itself durable


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_image_files(folder) -> List[str]:
    """All image files under ``folder`` (recursively; [] for a missing folder), sorted by relative path."""
    folder = os.fspath(folder)
    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.join(root, n) for n in names if is_image_file(n)]
    return sorted(files, key=lambda p: os.path.relpath(p, folder))


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
