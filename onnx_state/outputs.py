"""One rule for every command that writes, checked before any work is done.

The folder that will hold the output must exist (nothing is created on the way, so a typo
in a path is caught before a long run); an existing path is replaced only when asked
(``overwrite=True``, CLI ``--overwrite``), and only when it is of the kind being written —
a results store for a store, a regular file for a file, a folder for a folder — so that no
command ever deletes something it did not make. Messages name the path as the user gave it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from onnx_state.errors import InputError

__all__ = ["check_output", "deferred_interrupts", "progress_bar"]

Kind = Literal["store", "file", "folder"]


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    kind: Kind = "file",
    is_ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Check that *path* can be written; return it as a Path.

    Parameters
    ----------
    path:
        Where the output goes.
    overwrite:
        Allow replacing an existing output of the same kind.
    kind:
        ``store`` (a results store folder), ``file`` or ``folder``.
    is_ours:
        For stores: whether an existing folder is a results store (anything else is never
        replaced).
    """
    target = Path(path)
    shown = os.fspath(path)
    parent = target.absolute().parent
    if not parent.is_dir():
        raise InputError(
            f"the folder of {shown!r} ({parent}) does not exist; create it first or choose "
            "another path"
        )
    if not target.exists() and not target.is_symlink():
        return target
    if not overwrite:
        raise InputError(
            f"{shown} already exists; choose another path or replace it with --overwrite "
            "(overwrite=True)"
        )
    if target.is_symlink():
        raise InputError(f"{shown} is a symbolic link; not replacing it")
    if kind == "file" and not target.is_file():
        raise InputError(f"{shown} exists and is not a regular file; not replacing it")
    if kind == "folder" and not target.is_dir():
        raise InputError(f"{shown} exists and is not a folder; not replacing it")
    if kind == "store" and not (target.is_dir() and (is_ours is None or is_ours(target))):
        raise InputError(f"{shown} exists and is not an onnx_state results store; not replacing it")
    return target


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (a save finishes or is undone).

    A signal that arrives inside the block is delivered as it would have been once the
    block ends: Ctrl-C raises KeyboardInterrupt, SIGTERM runs its previous handler (by
    default, the process ends). Outside the main thread signals cannot be caught: the
    block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():  # None: set outside Python; use the default
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(held):  # even if the block failed: never lose one
            signal.raise_signal(signum)  # now handled (or deadly) as usual


class _NoBar:
    """What ``progress_bar`` returns when off: the bar's interface, doing nothing."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def progress_bar(
    total: int | None, enabled: bool | None, unit: str = "batch", desc: str | None = None
) -> Any:
    """A tqdm bar (a context manager with ``update``), or a stand-in when disabled.

    *enabled* None shows the bar when stderr is a terminal. tqdm is imported only when a bar
    is shown (it takes 5 ms to import).
    """
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, leave=False)
