"""Reader for the IDX format of MNIST (LeCun, Bottou, Bengio, Haffner 1998) and Fashion-MNIST (Xiao et al. 2017).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the data in C order. Only unsigned bytes (type 0x08), the one type these datasets
use, are read. ``.gz`` files are decompressed on the fly.
"""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

_UNSIGNED_BYTE = 0x08


def read_idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape announced by an IDX file's header, reading nothing else (for ``.gz``, only its first bytes): what a
    datamodule checks in its constructor, before any data is loaded."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = bytearray(f.read(4))
            head += f.read(4 * head[3]) if len(head) == 4 else b""
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise ValueError(f"Cannot read IDX file {path}: {err}.") from None
    return _parse_header(head, path)


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (raw or ``.gz``); ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = bytearray(f.read())
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError
        raise ValueError(f"Cannot read IDX file {path}: {err}.") from None
    shape = _parse_header(data, path)
    header = 4 + 4 * len(shape)
    if len(data) - header != math.prod(shape):
        raise ValueError(
            f"IDX file {path} holds {len(data) - header} bytes of data, but its header announces shape {shape} "
            f"({math.prod(shape)} bytes): the file is truncated or corrupt."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _parse_header(data: bytearray, path: Path) -> tuple[int, ...]:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UNSIGNED_BYTE:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes: its magic number is {bytes(data[:4]).hex()}, "
            "expected 000008 followed by the number of dimensions."
        )
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header.")
    return struct.unpack(f">{data[3]}I", data[4:header])
