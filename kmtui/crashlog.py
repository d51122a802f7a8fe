"""crash.log: where a fault in kmtui itself leaves its failing frames for whoever mends it."""

from __future__ import annotations

import traceback
from pathlib import Path

NAME = "crash.log"


def write(log_dir: Path, error: BaseException) -> Path | None:
    """Append the exception's type and frames, never its locals or message (either may hold a PIN
    or a key); None when the log cannot be written, so reporting a crash never raises."""
    target = log_dir / NAME
    try:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        frames = "".join(traceback.format_tb(error.__traceback__))
        with target.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {type(error).__name__}\n{frames}")
    except OSError:
        return None
    return target
