""".npy arrays (a bare file or an NPZ member) read only after their header is checked.

A header may declare any shape, and numpy allocates what it declares before reading a
byte: a small file (or a zip bomb) could ask for gigabytes. The declared size must be
exactly what the file or member holds after the header, and at most a caller's bound.
"""

from __future__ import annotations

import lzma
import math
import os
import tokenize
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from homodyne.data.errors import DataFileError

# what reading a zip member can raise besides OSError: a damaged or truncated archive, a
# broken deflate/LZMA stream, a compression method zipfile lacks (NotImplementedError), an
# encrypted member (RuntimeError: password required)
ZIP_ERRORS = (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile, zlib.error,
              lzma.LZMAError, NotImplementedError, RuntimeError)
# what numpy's header parser raises besides ValueError for a damaged header (a NUL in its
# space padding, a quote or comma flipped): Python's tokenizer and parser errors
HEADER_ERRORS = (*ZIP_ERRORS, tokenize.TokenError, SyntaxError)


def npy_header(fh: BinaryIO, stored: int, *, path, what: str,
               max_bytes: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the .npy stream at ``fh`` (``stored`` bytes long), from its header
    alone; DataFileError unless the data it declares are there and within ``max_bytes``."""
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    except HEADER_ERRORS as exc:
        why = exc.args[0] if isinstance(exc, tokenize.TokenError) and exc.args else exc
        raise DataFileError(path, f"{what} has no readable .npy header ({why})") from None
    if any(isinstance(k, bool) or k < 0 for k in shape):  # numpy's parser lets them by
        raise DataFileError(path, f"{what} has no readable .npy header (shape {shape} is not "
                                  "a list of sizes >= 0)")
    if dtype.hasobject:
        raise DataFileError(path, f"{what} is unreadable: Object arrays cannot be loaded "
                                  "(they hold Python objects); save it with a numeric dtype")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    there = stored - fh.tell()
    if declared != there:
        raise DataFileError(path, f"{what} declares shape {shape} of {dtype} ({declared:,} "
                                  f"bytes) but holds {there:,} bytes after its header: the "
                                  "file is truncated or corrupt; write it again")
    if declared > max_bytes:
        raise DataFileError(path, f"{what} declares shape {shape} of {dtype} ({declared:,} "
                                  f"bytes), more than the {max_bytes:,} bytes such an array "
                                  "may have")
    return shape, dtype


def npy_file_header(path, *, max_bytes: int) -> tuple[tuple[int, ...], np.dtype]:
    """The checked header of a bare .npy file (see ``npy_header``)."""
    try:
        with open(path, "rb") as fh:
            return npy_header(fh, os.fstat(fh.fileno()).st_size, path=path,
                              what="the array", max_bytes=max_bytes)
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror or exc}") from None


def npz_headers(path, names, *, max_bytes: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The checked header of each NPZ member ``names`` (without '.npy'), from the zip's
    directory and each member's first bytes; nothing else is decompressed."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in names:
                info = zf.getinfo(f"{name}.npy")
                with zf.open(info) as fh:
                    headers[name] = npy_header(fh, info.file_size, path=path,
                                               what=f"array {name!r}", max_bytes=max_bytes)
    except DataFileError:
        raise
    except ZIP_ERRORS as exc:
        raise DataFileError(path, f"not a readable NPZ file: {exc}") from None
    return headers
