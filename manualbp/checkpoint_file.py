"""Is a checkpoint file whole? The one check every reader of a checkpoint makes before loading it
(``manualbp.training.checkpoints.read_checkpoint`` for train.py's resume and eval.py,
``manualbp.predict``).

``verified_checkpoint_bytes(path)`` reads the file and refuses, with a ``CheckpointError`` that
names it and says what to do, one that is missing, empty or damaged:

* with a ``<name>.sha256`` file beside it (train.py writes one with every checkpoint;
  ``sha256sum -c`` reads it), its SHA-256 must be one recorded there;
* without one (a checkpoint from elsewhere), each member of its zip archive (torch.save's format)
  must match the CRC32 stored for it, so flipped or overwritten bytes are found either way.

Only the standard library: ``python -m manualbp.predict`` loads no Lightning.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
import zlib
from pathlib import Path

from manualbp.errors import ManualbpError

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(ManualbpError):
    """A checkpoint that is missing, damaged, or of another model."""


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def recorded_digests(path: Path) -> list[str]:
    """The SHA-256 digests ``<path>.sha256`` accepts for ``path`` (none if it has no such file)."""
    try:
        lines = checksum_path(path).read_text().splitlines()
    except OSError:
        return []
    return [line.split()[0] for line in lines if line.strip()]


def what_to_do(path: Path, otherwise: str = "start again without ckpt_path") -> str:
    """Advice for an unusable checkpoint: the run's other checkpoints, or ``otherwise``."""
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path) if path.parent.is_dir() else []
    instead = f"use another checkpoint of the run ({', '.join(others)} in {path.parent}) or " if others else ""
    return f"{instead}{otherwise}"


def damaged_zip_member(data: bytes) -> str | None:
    """The first member of the zip archive ``data`` whose bytes do not match their stored CRC32
    (None: all match, or ``data`` is not a readable zip archive, which loading then reports)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    with archive:
        try:
            return archive.testzip()
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as error:
            return f"(unreadable member: {error})"


def verified_checkpoint_bytes(path: str | os.PathLike, otherwise: str = "start again without ckpt_path") -> bytes:
    """The bytes of the checkpoint at ``path``, verified by its ``.sha256`` file or, without one,
    by its zip members' CRC32. Raises CheckpointError naming the file and what to do (the run's
    other checkpoints, or ``otherwise``) for a file that is missing, empty or damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({error.strerror}); {what_to_do(path, otherwise)}"
        ) from None
    if not data:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): the save that wrote it was cut off; {what_to_do(path, otherwise)}"
        )
    digests = recorded_digests(path)
    if digests:
        if hashlib.sha256(data).hexdigest() not in digests:
            raise CheckpointError(
                f"checkpoint {path} is damaged: its SHA-256 is not the one recorded when it was saved "
                f"({checksum_path(path).name}); its bytes changed since. {what_to_do(path, otherwise).capitalize()}"
            )
        return data
    damaged = damaged_zip_member(data)
    if damaged is not None:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its part {damaged} does not match the CRC32 stored in the file; "
            f"its bytes changed since it was saved. {what_to_do(path, otherwise).capitalize()}"
        )
    log.info("checkpoint %s has no %s file: verified by its CRC32 checksums only", path, CHECKSUM_SUFFIX)
    return data


def load_verified_checkpoint(path: str | os.PathLike, otherwise: str) -> dict:
    """The checkpoint at ``path`` as torch.load reads it (CPU, ``weights_only``: plain values and
    tensors), after :func:`verified_checkpoint_bytes`. Raises CheckpointError naming the file for
    one that is damaged or that torch cannot read."""
    import torch  # here: verifying needs only the standard library

    data = verified_checkpoint_bytes(path, otherwise)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a checkpoint torch can read ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint
