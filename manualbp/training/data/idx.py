"""Y. LeCun's IDX format, in which MNIST-family files come: a checker that names a truncated or
corrupt file, and a writer (for tests and benchmarks that need MNIST-shaped files)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from manualbp.errors import DataError

# IDX element types: code -> bytes per element (Y. LeCun's format, as torchvision reads it).
_IDX_ITEM_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: Path, origin: Path | None = None) -> tuple[int, ...]:
    """Check that ``path`` is a complete IDX file; return its dimensions.

    Raises DataError naming the file if the magic number is wrong or the size does not match
    what the header promises (a truncated download, say). ``origin``: the ``.gz`` that ``path``
    was unpacked from, if it was; the error names it instead (the user's file, not the copy).
    """
    if origin is None or origin == path:
        where, advice = f"{path}", "delete it and run again to download a fresh copy"
    else:
        where = f"{origin} (unpacked)"
        advice = "replace it with a good copy, or delete it and run again to download a fresh copy"
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            magic = file.read(4)
            if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_ITEM_SIZE:
                raise DataError(
                    f"{where} is not an IDX file (it starts with bytes {magic.hex() or 'none'}, "
                    f"expected 0000 followed by a type code); {advice}"
                )
            dims = struct.unpack(f">{magic[3]}I", file.read(4 * magic[3]))
    except struct.error:
        raise DataError(f"{where} is truncated inside its header; {advice}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None
    expected = 4 + 4 * len(dims) + math.prod(dims) * _IDX_ITEM_SIZE[magic[2]]
    if size != expected:
        raise DataError(
            f"{where} is truncated or corrupt: its header promises {' x '.join(map(str, dims))} "
            f"items ({expected:,} bytes) but the file has {size:,} bytes; {advice}"
        )
    return dims


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array`` (any shape, values 0..255): the magic
    number 0x0000 08 <ndim>, the big-endian dimensions, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()
