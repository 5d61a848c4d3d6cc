"""Where an HDF5 dataset's values live: storage that would be read as zeros or fill values.

HDF5 reads a dataset kept in external raw files as zeros past their end (or fails when
they are missing), and a virtual dataset as its fill value wherever no source maps it or
a source is missing or short. A reader refuses such a dataset, naming the gap, before a
value is read: fill values fitted as data give a wrong result without a word.
"""

from __future__ import annotations

import os

import h5py

from homodyne.data.errors import DataFileError


def refuse_unread_storage(path, h5: h5py.File, name: str, obj: h5py.Dataset) -> None:
    """DataFileError unless every value of ``obj`` (``name`` in the open file ``h5`` at
    ``path``) is stored in this file, or in virtual sources that hold all it maps."""
    plist = obj.id.get_create_plist()
    if plist.get_external_count():
        raw = plist.get_external(0)[0].decode(errors="replace")
        raise DataFileError(path, f"{name} keeps its values in the external raw file {raw}; "
                                  "external storage is not read (HDF5 reads zeros past its "
                                  "end): copy the data into the file")
    if obj.is_virtual:
        _check_virtual(path, h5, name, obj)


def _check_virtual(path, h5, name, obj) -> None:
    base = os.path.dirname(os.path.abspath(h5.filename))
    mapped = 0
    for src in obj.virtual_sources():
        want = src.vspace.get_select_npoints()
        mapped += want
        if src.file_name == ".":
            held = _size(h5, src.dset_name)
        else:
            full = os.path.join(base, src.file_name)
            if not os.path.exists(full):
                raise DataFileError(path, f"{name} is a virtual dataset whose source file "
                                          f"{src.file_name} is missing; copy it next to the file")
            try:
                with h5py.File(full, "r") as other:
                    held = _size(other, src.dset_name)
            except (OSError, RuntimeError) as exc:
                raise DataFileError(path, f"{name} is a virtual dataset whose source file "
                                          f"{src.file_name} cannot be read ({exc})") from None
        if held < want:
            what = "is missing" if held < 0 else f"holds {held:,} of the {want:,} values mapped"
            raise DataFileError(path, f"{name} is a virtual dataset whose source "
                                      f"{src.file_name}:{src.dset_name} {what} (HDF5 would read "
                                      "its fill value instead); copy the complete data in")
    if mapped < obj.size:
        raise DataFileError(path, f"{name} is a virtual dataset that maps {mapped:,} of its "
                                  f"{obj.size:,} values (the rest would read as its fill "
                                  "value); copy the complete data in")


def _size(h5, name) -> int:
    """Values held by dataset ``name`` of an open file, -1 if there is none."""
    obj = h5.get(name)
    return int(obj.size) if isinstance(obj, h5py.Dataset) else -1
