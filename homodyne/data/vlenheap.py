"""Variable-length strings checked in the file's raw bytes before HDF5 reads them.

HDF5 keeps a variable-length string in a global heap collection (``GCOL``) and stores,
per element, a reference to it (length u32, collection address, object index u32). One
flipped byte in a collection's sizes or in a reference makes HDF5's read spin for ever
(in C, GIL held: no Python timeout stops it). So every reference of a dataset read here
is followed by hand: the address must lie inside the file, the collection must be well
formed (every object inside it, the walk ending exactly at its end) and the object named
must exist with the string's length. Layout: the HDF5 file format spec, "Global Heap".
"""

from __future__ import annotations

import os
import struct

import h5py
import numpy as np

COLLECTION_HEAD = 8  # "GCOL", version, 3 reserved bytes; then the collection size
OBJECT_HEAD = 8  # index u16, reference count u16, reserved u32; then the object size
MAX_COLLECTION = 1 << 30  # far above HDF5's own collections (4 kB up to an object's size)


def vlen_string_problem(h5: h5py.File, ds: h5py.Dataset, name: str) -> str | None:
    """What is wrong with ``ds``'s variable-length strings (damage, or a storage whose
    references cannot be checked), else None; None too when it holds none."""
    tid = ds.id.get_type()
    if not holds_vlen_strings(tid):
        return None
    if tid.get_class() != h5py.h5t.STRING:
        return (f"{name} holds variable-length strings inside a {_class_name(tid)} type, "
                "which no APS or homodyne file stores there; re-export the file")
    raw = _raw_elements(ds)
    if isinstance(raw, str):
        return f"{name} {raw}"
    addr_size, len_size = h5.id.get_create_plist().get_sizes()
    base = h5.userblock_size
    try:
        with open(h5.filename, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            problem = _references_problem(fh, size, base, raw, addr_size, len_size)
    except OSError as exc:
        return f"{name} cannot be checked: {exc}"
    return f"{name}: {problem}" if problem else None


def holds_vlen_strings(tid) -> bool:
    """Whether the HDF5 type ``tid`` is or holds a variable-length string."""
    kind = tid.get_class()
    if kind == h5py.h5t.STRING:
        return bool(tid.is_variable_str())
    if kind == h5py.h5t.ARRAY:
        return holds_vlen_strings(tid.get_super())
    if kind == h5py.h5t.COMPOUND:
        return any(holds_vlen_strings(tid.get_member_type(i))
                   for i in range(tid.get_nmembers()))
    return False


def _class_name(tid) -> str:
    return {h5py.h5t.ARRAY: "array", h5py.h5t.COMPOUND: "compound"}.get(tid.get_class(),
                                                                        "composite")


def _raw_elements(ds: h5py.Dataset) -> list[tuple[str, int, int]] | str:
    """The stored bytes of ``ds`` (contiguous: one block; chunked without filters: one per
    chunk), or why they cannot be reached (compact: inside the object header)."""
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:  # never written: HDF5 reads empty strings, no heap
            return []
        return [("contiguous", offset, ds.id.get_storage_size())]
    if layout == h5py.h5d.CHUNKED:
        if ds.id.get_create_plist().get_nfilters():
            return ("is a compressed variable-length string, whose references cannot be "
                    "checked before HDF5 reads them; store it uncompressed or as a "
                    "fixed-length string")
        out = []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            out.append(("chunk", info.byte_offset, info.size))
        return out
    return ("is a variable-length string stored compact (inside its object header), whose "
            "references cannot be checked before HDF5 reads them (a damaged one hangs it); "
            "store it contiguous or as a fixed-length string")


def _references_problem(fh, size: int, base: int, blocks, addr_size: int,
                        len_size: int) -> str | None:
    """The first bad reference in the stored ``blocks`` (kind, file offset, bytes)."""
    width = 4 + addr_size + 4
    collections: dict[int, dict[int, int] | str] = {}
    for _, offset, nbytes in blocks:
        if offset < 0 or offset + nbytes > size or nbytes % width:
            return (f"its stored references ({nbytes:,} bytes at {offset:,}) do not fit the "
                    f"file ({size:,} bytes): corrupt HDF5 metadata; re-export or copy the "
                    "file again")
        fh.seek(offset)
        data = fh.read(nbytes)
        for k in range(0, nbytes, width):
            length = int.from_bytes(data[k:k + 4], "little")
            addr = int.from_bytes(data[k + 4:k + 4 + addr_size], "little")
            index = int.from_bytes(data[k + 4 + addr_size:k + width], "little")
            if length == 0 and addr == 0:  # an empty (never set) string: no heap object
                continue
            if addr not in collections:
                collections[addr] = _collection(fh, size, base + addr, len_size)
            objects = collections[addr]
            if isinstance(objects, str):
                return objects
            if objects.get(index) != length:
                found = ("no such object" if index not in objects
                         else f"an object of {objects[index]:,} bytes")
                return (f"corrupt HDF5 metadata (a string of {length:,} bytes refers to "
                        f"object {index} of the global heap at {base + addr:,}: "
                        f"{found}); re-export or copy the file again")
    return None


def _collection(fh, size: int, at: int, len_size: int) -> dict[int, int] | str:
    """Object index -> size of the global heap collection at file offset ``at``, or what
    is wrong with it (the walk HDF5 does, with every size checked)."""
    bad = f"corrupt HDF5 metadata (the global heap collection at {at:,}"
    head = COLLECTION_HEAD + len_size
    if at + head > size:
        return (f"{bad} lies past the end of the file, {size:,} bytes); re-export or copy "
                "the file again")
    fh.seek(at)
    raw = fh.read(head)
    total = int.from_bytes(raw[COLLECTION_HEAD:], "little")
    if raw[:4] != b"GCOL" or raw[4] != 1:
        return f"{bad} has no GCOL version 1 signature); re-export or copy the file again"
    if not head <= total <= MAX_COLLECTION or at + total > size:
        return (f"{bad} declares {total:,} bytes, beyond the file or its header); "
                "re-export or copy the file again")
    fh.seek(at)
    data = np.frombuffer(fh.read(total), np.uint8)
    objects: dict[int, int] = {}
    pos, obj_head = head, OBJECT_HEAD + len_size
    while total - pos >= obj_head:  # a shorter tail is free space, as HDF5 reads it
        index, = struct.unpack_from("<H", data, pos)
        nbytes = int.from_bytes(bytes(data[pos + OBJECT_HEAD:pos + obj_head]), "little")
        need = nbytes if index == 0 else obj_head + (nbytes + 7) // 8 * 8
        if need < obj_head or pos + need > total:
            return (f"{bad}: object {index} at +{pos} declares {nbytes:,} bytes, outside the "
                    "collection); re-export or copy the file again")
        if index:
            objects[index] = nbytes
        pos += need
    return objects
