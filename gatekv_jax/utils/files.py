"""Atomic file writes (a long job killed at any moment never leaves a half-written file) and checked JSON reads."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)`, then rename onto `path` (same folder, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: str, value: Any) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(value, f, indent=1)

    write_atomically(path, write)


def read_json(path: str) -> Any:
    """A JSON file's value; a missing, truncated or non-JSON file is a ValueError naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist")
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is truncated or not JSON ({e})") from e


def save_figure(figure, path: str) -> None:
    """Save a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)
