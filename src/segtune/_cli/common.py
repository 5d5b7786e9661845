"""What the ``segtune`` subcommands share: the usage error, Ctrl-C during long work, input paths.

Only the standard library is imported here: ``segtune --help`` and ``segtune models`` load every
subcommand module, and stay fast because nothing heavy (torch, dask) comes with them.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A problem with the user's input that a one-line message explains (exit code 2)."""


@contextmanager
def stop_on_ctrl_c(command: str) -> Iterator[Any]:
    """Long work under Ctrl-C: yields the :class:`~segtune.core.progress.CancelToken` to pass it.

    The first Ctrl-C cancels the token, so the work stops after its current step and keeps what it
    finished; a second one raises KeyboardInterrupt at once. The previous handler is restored on
    the way out.
    """
    from segtune.core.progress import CancelToken

    token = CancelToken()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        if token.cancelled:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        print(f"\nsegtune {command}: stopping after this step (Ctrl-C again to abort at once)", file=sys.stderr)
        token.cancel()

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield token
    finally:
        signal.signal(signal.SIGINT, previous)


def scene_arg(text: str | None) -> str | int | None:
    """``--scene``: a number is the scene's index, anything else its name."""
    return int(text) if text is not None and text.isdigit() else text


def image_files(paths: Sequence[str], option: str) -> list[Path]:
    """Files as given, in order; a folder stands for the image files directly inside it (sorted).

    Raises FileNotFoundError naming ``option`` for a path that does not exist or a folder without
    image files.
    """
    from segtune.core.io import SUPPORTED_EXTENSIONS

    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUPPORTED_EXTENSIONS)), key=str
            )
            if not found:
                raise FileNotFoundError(
                    f"{option} folder {path} holds no image files ({', '.join(SUPPORTED_EXTENSIONS)})"
                )
            files.extend(found)
        elif not path.exists():
            raise FileNotFoundError(f"{option}: {path} does not exist")
        else:
            files.append(path)
    return files
