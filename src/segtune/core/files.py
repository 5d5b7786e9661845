"""Writing output files so that nobody ever sees half of one: the package's one atomic writer.

Every file segtune writes (label images, tables, overlays, ROI sets, model files, logs) goes
through :func:`atomic_write`. What can go wrong, and what is left behind in each case:

- **The process is killed mid-write** (kill -9, power loss). The data goes to a temporary file
  beside the destination, is flushed to disk, and only then appears under its final name; the
  final name either does not exist or holds a complete file. The temporary is named
  ``.NAME.segtune-HOST-PID-RANDOM.tmp`` so the next write of ``NAME`` finds it and removes it
  once the process that made it is gone (:func:`remove_stale_temporaries`).
- **Two writers race for one name without overwrite.** The existence check and the publishing
  are one atomic step: the temporary is hard-linked to the final name, which fails if the name
  exists. Exactly one writer wins; the other gets :class:`FileExistsError`. (On a file system
  without hard links the check and the rename are two steps; the race is then only narrowed.)
- **The disk says no** (read-only, no permission, full, the name is a folder). Nothing is left
  at the final name and the temporary is removed; the error is an :class:`OutputError` (an
  ``OSError``) naming the file and the reason in words.

Files get the permissions a plain ``open()`` would give them (``0o666 & ~umask``), not the
private ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "OutputError",
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output",
    "ome_metadata",
    "remove_stale_temporaries",
    "temporary_path",
]

_TAG = "segtune"
# .NAME.segtune-HOST-PID-RANDOM.tmp[.ext]: the extension stays last for writers that go by it
_TEMPORARY = re.compile(rf"^\.(?P<name>.+)\.{_TAG}-(?P<host>[A-Za-z0-9_]*)-(?P<pid>\d+)-[0-9a-f]+\.tmp(\.\w+)?$")
# a temporary whose process cannot be checked (another host) is stale after this long
_STALE_AFTER_S = 24 * 3600

_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EISDIR: "it is an existing folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


class OutputError(OSError):
    """An output could not be written: the message names the file and the reason in words."""

    def __init__(self, path: str | os.PathLike, reason: str, errno_: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(errno_ or 0, f"cannot write {self.path}: {reason}")

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.reason}"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible (nor needed) on Windows
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_path(path: str | os.PathLike, *, pid: int | None = None, keep_extension: bool = True) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.segtune-HOST-PID-RANDOM.tmp[.ext]``."""
    path = Path(path)
    extension = path.suffix if keep_extension and re.fullmatch(r"\.\w+", path.suffix) else ""
    token = secrets.token_hex(4)
    return path.parent / f".{path.name}.{_TAG}-{_host()}-{os.getpid() if pid is None else pid}-{token}.tmp{extension}"


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True  # unknown: left to the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries an earlier, killed write of ``path`` left beside it; returns them.

    Only names of our own pattern for this very ``path`` are touched, and only when the process
    that made them has ended (same host) or they are a day old (another host, or no way to ask).
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.{_TAG}-*.tmp*"))
    except OSError:
        return removed
    host, now = _host(), time.time()
    for candidate in candidates:
        match = _TEMPORARY.match(candidate.name)
        if not match or match["name"] != path.name:
            continue
        try:
            old = now - candidate.lstat().st_mtime > _STALE_AFTER_S
            if match["host"] == host and int(match["pid"]) != os.getpid():
                stale = old or not _alive(int(match["pid"]))
            else:
                stale = old and int(match["pid"]) != os.getpid()
            if stale:
                if candidate.is_dir() and not candidate.is_symlink():
                    shutil.rmtree(candidate)
                else:
                    candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def check_output(path: str | os.PathLike, overwrite: bool = False, *, folder: bool = False) -> Path:
    """Refuse an output early, before any work: an existing file without ``overwrite``, a folder.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        ``path`` is an existing folder (or, with ``folder=True``, an existing file), or a part of
        its parent path is a file.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(path, "it is an existing folder; name a file", errno.EISDIR)
    if folder and path.exists() and not path.is_dir():
        raise OutputError(path, "it is an existing file, not a folder", errno.ENOTDIR)
    if path.exists() and not overwrite and not (folder and not any(path.iterdir())):
        raise FileExistsError(f"{path} already exists; pass overwrite=True (or --overwrite) to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(path, f"{parent} is a file, not a folder", errno.ENOTDIR)
            break
    return path


def _os_error(path: Path, error: OSError) -> OutputError:
    reason = _REASONS.get(error.errno or -1) or error.strerror or str(error)
    return OutputError(path, reason, error.errno)


def _publish(temporary: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)  # fails with EEXIST if the name exists: create-if-absent
    except FileExistsError:
        raise FileExistsError(
            f"{path} already exists (another writer created it first); "
            "pass overwrite=True (or --overwrite) to replace it"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # no hard links here (some network and FAT file systems): check, then rename
        if path.exists():
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True (or --overwrite) to replace it"
            ) from None
        os.replace(temporary, path)
        return
    temporary.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any], *, overwrite: bool = False) -> Path:
    """Write a file through ``write(temporary_path)`` and publish it under ``path`` atomically.

    Parameters
    ----------
    path
        The final name. Its folder is created if missing.
    write
        Called with the temporary path (same folder, same extension); writes the whole file
        there, e.g. ``lambda p: tifffile.imwrite(p, array)``.
    overwrite
        Replace an existing ``path``. Without it an existing ``path`` (also one another writer
        creates meanwhile) raises FileExistsError and nothing is changed.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        The disk refused (read-only, permission, full, ``path`` is a folder); nothing is left.

    Examples
    --------
    >>> atomic_write("table.csv", lambda p: df.to_csv(p))      # doctest: +SKIP
    """
    path = check_output(path, overwrite)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        temporary = temporary_path(path)
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        _publish(temporary, path, overwrite)
    except (FileExistsError, OutputError):
        raise
    except OSError as e:
        raise _os_error(path, e) from e
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """:func:`atomic_write` of ``data``; replaces an existing file unless ``overwrite=False``."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), overwrite=overwrite)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name; on success it appears as ``folder`` in one rename.

    An empty existing ``folder`` is replaced; a non-empty one raises FileExistsError unless
    ``overwrite`` (then it is replaced as a whole). A folder another writer publishes meanwhile
    makes the rename fail (a rename onto a non-empty folder is refused), and FileExistsError
    is raised; the temporary is removed on any failure.
    """
    folder = check_output(folder, overwrite, folder=True)
    temporary = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        temporary = temporary_path(folder, keep_extension=False)
        temporary.mkdir(mode=0o777)
        yield temporary
        if overwrite and folder.is_dir() and any(folder.iterdir()):
            old = temporary_path(folder, keep_extension=False)
            os.replace(folder, old)
            try:
                os.replace(temporary, folder)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(temporary, folder)  # onto a missing or empty folder only
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise FileExistsError(
                        f"{folder} already exists (another writer created it first); pass overwrite=True to replace it"
                    ) from None
                raise
    except (FileExistsError, OutputError):
        raise
    except OSError as e:
        raise _os_error(folder, e) from e
    finally:
        if temporary is not None and temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    _fsync_dir(folder.parent)


def ome_metadata(axes: str, pixel_sizes: Sequence[float | None] | None = None) -> dict[str, Any]:
    """tifffile's ``metadata=`` for an OME-TIFF: the axes and the (Z, Y, X) pixel sizes in µm."""
    metadata: dict[str, Any] = {"axes": axes}
    sizes = tuple(pixel_sizes) if pixel_sizes is not None else (None, None, None)
    for axis, value in zip("ZYX", sizes, strict=True):
        if value is not None:
            metadata[f"PhysicalSize{axis}"] = float(value)
            metadata[f"PhysicalSize{axis}Unit"] = "µm"
    return metadata
