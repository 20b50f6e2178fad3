"""A directory written beside its final path under a temporary name and renamed into place
when complete, so an interrupted writer never leaves one that looks finished (engine
directories, quantized checkpoints)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """Yields the directory to fill; on a clean exit it replaces `output`, on an error (or
    an interrupt) it is removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would keep other users out of the result
        yield staging
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
