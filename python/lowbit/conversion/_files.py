"""Small helpers the conversion readers and writers share: strict JSON objects, the progress bar,
and publishing a finished temporary file (modes, rename, folder fsync)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DestinationExistsError

__all__ = ["file_mode", "fsync_dir", "progress_bar", "publish_file", "unique_keys"]


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=unique_keys)`: a repeated key is a ValueError (a
    JSONDecodeError's base), not silently the last value."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, desc: str) -> Iterator[Any]:
    """A tqdm bar over `total` bytes on stderr, or None when disabled."""
    bar: Any = None
    if enabled:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def file_mode(directory: bool = False) -> int:
    """The mode a plain open (0o666) or mkdir (0o777) would give under the current umask;
    mkstemp/mkdtemp make private 0600/0700 files."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable, where directories can be fsynced."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_file(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished, fsynced file `tmp` to `dst` (same folder), with a plain open's mode.
    Without `overwrite`, never replace a file that appeared meanwhile: a hard link fails if `dst`
    exists (filesystems without hard links fall back to a checked rename)."""
    tmp.chmod(file_mode())
    if overwrite:
        os.replace(tmp, dst)
    else:
        try:
            os.link(tmp, dst)
        except FileExistsError:
            raise DestinationExistsError(f"{dst} appeared while writing") from None
        except OSError:
            if dst.exists():
                raise DestinationExistsError(f"{dst} appeared while writing") from None
            os.replace(tmp, dst)
        else:
            tmp.unlink()
    fsync_dir(dst.parent)
