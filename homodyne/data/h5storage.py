"""Where an HDF5 dataset's values live: storage that would be read as zeros or fill values.

HDF5 reads a dataset kept in external raw files as zeros past their end (or fails when
they are missing), and a virtual dataset as its fill value wherever no source maps it or
a source is missing or short. A reader refuses such a dataset, naming the gap, before a
value is read: fill values fitted as data give a wrong result without a word.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import h5py
import numpy as np

from homodyne.data.errors import DataFileError


def external_link(h5: h5py.File, name: str) -> h5py.ExternalLink | None:
    """The external link ``name`` (itself or a parent group) leads through, or None: its
    data live in another file."""
    parts = name.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        link = h5.get("/" + "/".join(parts[:k]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            return link
    return None


def dangling_soft_link(h5: h5py.File, name: str) -> str | None:
    """What is wrong when ``name`` (itself or a parent group) is a soft link to a path that
    does not exist in the file, else None: HDF5 reports it as a missing component, which
    reads like damage to a good file."""
    parts = name.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        sub = "/" + "/".join(parts[:k])
        link = h5.get(sub, getlink=True)
        if isinstance(link, h5py.SoftLink) and h5.get(sub) is None:
            return (f"{sub} is a soft link to {link.path}, which does not exist in the file; "
                    "fix the link or copy the data there")
    return None


def one_object_twice(h5: h5py.File, names) -> str | None:
    """What is wrong when two of ``names`` lead to one HDF5 object (a soft or hard link
    from one to the other), else None: one angle's matrix fitted for another, or the
    errors fitted as g2, without a word."""
    seen: dict = {}
    for name in names:
        first = seen.setdefault(h5[name].id, name)  # ids compare by file and address
        if first != name:
            return (f"{first} and {name} are one dataset (a link leads from one to the "
                    "other), not two: give each its own values (re-export the file)")
    for name in names:
        for mapped in _same_file_sources(h5, name):
            first = seen.get(mapped)
            if first is not None and first != name:
                return (f"{name} is a virtual dataset that maps values of {first}, not values "
                        f"of its own: give each its own values (re-export the file)")
    return _shared_values(h5, names)


def _shared_values(h5: h5py.File, names) -> str | None:
    """What is wrong when two of ``names`` read the same stored values through virtual
    datasets at any depth (c2_00002 -> other.h5:k -> c2_00001 of this file, or both mapping
    one region of a third file), else None: the one-level check sees only this file."""
    readers: dict = {}  # stored dataset -> (selected name, box read, 'file:dataset') each
    own, opened = {}, {}
    try:
        for name in names:
            obj = h5[name]
            if obj.is_virtual:
                reads = _stored_reads(h5, obj, None, opened)
            else:
                key = (os.path.realpath(h5.filename), _address(obj))
                reads, own[key] = [(key, None, name)], name
            for key, box, where in reads:
                readers.setdefault(key, []).append((name, box, where))
    finally:
        for f in opened.values():
            f.close()
    for key, found in readers.items():
        pair = _overlapping_pair(found)
        if pair is None:
            continue
        (a, _, where), (b, _, _) = pair
        first = own.get(key)
        if first in (a, b):
            other = b if first == a else a
            return (f"{other} is a virtual dataset that maps values of {first}, not values "
                    "of its own: give each its own values (re-export the file)")
        return (f"{a} and {b} are virtual datasets that map the same values ({where}), not "
                "two matrices: give each its own values (re-export the file)")
    return None


def _overlapping_pair(found: list) -> tuple | None:
    """Two reads of one stored dataset, by two names, whose boxes meet, else None. Only
    names whose reads' bounding boxes meet are swept (24 matrices mapped from one stack in
    rows cut in 8: 76,800 boxes in 24 slabs, one sweep with each slab's boxes all open: 19 s)."""
    by_name: dict = {}
    for item in found:
        by_name.setdefault(item[0], []).append(item)
    names = list(by_name)
    bounds = {n: _bounding(by_name[n]) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _boxes_meet(bounds[a], bounds[b]):
                pair = _sweep(by_name[a] + by_name[b])
                if pair is not None:
                    return pair
    return None


def _bounding(items: list):
    """The box holding every read of ``items`` (None: one of them reads all)."""
    if any(x[1] is None for x in items):
        return None
    low = tuple(map(min, zip(*(x[1][0] for x in items), strict=True)))
    return low, tuple(map(max, zip(*(x[1][1] for x in items), strict=True)))


def _sweep(items: list) -> tuple | None:
    """Two reads of different names among ``items`` whose boxes meet: a sweep along the
    first axis, each read compared with the other names' reads still open."""
    def start(item) -> float:
        return -math.inf if item[1] is None else item[1][0][0]

    active: dict = {}
    for item in sorted(items, key=start):
        at = start(item)
        for name, open_ in active.items():
            if name == item[0]:
                continue
            open_[:] = [x for x in open_ if x[1] is None or x[1][1][0] >= at]
            for x in open_:
                if _boxes_meet(x[1], item[1]):
                    return x, item
        active.setdefault(item[0], []).append(item)
    return None


def _address(ds) -> int:
    """The object's address in its file: two names (links) of one dataset share it."""
    return h5py.h5o.get_info(ds.id).addr


def _stored_reads(h5, obj, box, opened: dict, depth: int = 0) -> list:
    """The stored datasets the virtual ``obj`` (of the open file ``h5``) reads where it
    is read in ``box`` (a (low, high) corner pair, None: all): ((real path, address), the
    box read of it, 'file:dataset') each, following virtual sources in other files too
    (``opened``: the files opened so far, by real path, each opened once; the caller
    closes them). Sources that cannot be opened are left out (refuse_unread_storage names
    them)."""
    if depth >= MAX_VIRTUAL_DEPTH:
        return []
    base = os.path.dirname(os.path.abspath(h5.filename))
    prefix = obj.id.get_access_plist().get_virtual_prefix().decode(errors="replace")
    found = []
    for src in obj.virtual_sources():
        if not _boxes_meet(box, _box(src.vspace, obj.shape)):
            continue
        full = h5.filename if src.file_name == "." else \
            _source_file(src.file_name, base, prefix)
        if full is None:
            continue
        try:
            other = h5 if src.file_name == "." else _open_once(full, opened)
        except (OSError, RuntimeError):
            continue
        ds = other.get(src.dset_name)
        if not isinstance(ds, h5py.Dataset):
            continue
        part = _box_read(box, _box(src.vspace, obj.shape), _box(src.src_space, ds.shape))
        if ds.is_virtual:
            found += _stored_reads(other, ds, part, opened, depth + 1)
        else:
            found.append(((os.path.realpath(full), _address(ds)), part,
                          f"{src.file_name}:{src.dset_name}"))
    return found


def _open_once(full: str, opened: dict) -> h5py.File:
    """The source file ``full`` open for reading, once per real path however many sources
    name it (``opened``: by real path; the caller closes them)."""
    real = os.path.realpath(full)
    if real not in opened:
        opened[real] = h5py.File(full, "r")
    return opened[real]


def _box(space, shape) -> tuple:
    """The corners (low, high) of a selection in a dataspace of ``shape``."""
    if space.get_select_type() == h5py.h5s.SEL_ALL:
        return (0,) * len(shape), tuple(n - 1 for n in shape)
    return space.get_select_bounds()


def _box_read(box, mapped, source) -> tuple:
    """The box of a source read when its virtual dataset is read in ``box``: the part of
    ``box`` inside the region ``mapped`` moved to where ``source`` starts, when both regions
    have one shape (else all of ``source``, which may claim more than is read)."""
    if box is None or any(len(c[0]) != len(box[0]) for c in (mapped, source)) or any(
            h1 - l1 != h2 - l2 for l1, h1, l2, h2 in zip(*mapped, *source, strict=True)):
        return source
    low = [s + max(b, m) - m for b, m, s in zip(box[0], mapped[0], source[0], strict=True)]
    high = [s + min(b, m_hi) - m for b, m, m_hi, s in
            zip(box[1], mapped[0], mapped[1], source[0], strict=True)]
    return tuple(low), tuple(high)


def _boxes_meet(a, b) -> bool:
    """Whether two selections' boxes (None: all of a space) share a point."""
    if a is None or b is None:
        return True
    return all(lo1 <= hi2 and lo2 <= hi1
               for lo1, hi1, lo2, hi2 in zip(a[0], a[1], b[0], b[1], strict=True))


def _same_file_sources(h5: h5py.File, name: str) -> list:
    """The ids of the datasets of this file that the virtual dataset ``name`` maps (none
    for a stored one, or for sources HDF5 cannot find: refuse_unread_storage names those)."""
    obj = h5[name]
    if not obj.is_virtual:
        return []
    here = os.path.realpath(h5.filename)
    base = os.path.dirname(here)
    ids = []
    for src in obj.virtual_sources():
        if src.file_name == "." or os.path.realpath(os.path.join(base, src.file_name)) == here:
            try:
                ids.append(h5[src.dset_name].id)
            except (KeyError, RuntimeError, OSError):
                continue
    return ids


def soft_link_loop(h5: h5py.File) -> str | None:
    """What is wrong when a soft link in the file leads back to itself through other soft
    links (HDF5 gives up after a few hops with "too many links", which reads like damaged
    metadata), else None: every looping link, named with its target."""
    links: list[tuple[str, str]] = []

    def visit(name, link):  # only collect: an error raised inside HDF5's walk is unsafe
        if isinstance(link, h5py.SoftLink):
            links.append((name, link.path))

    try:
        h5.visititems_links(visit)
    except Exception:  # the walk itself failed: damage, not a loop (h5py reports an
        return None  # error inside HDF5's walk as a SystemError, too)
    looped = []
    for name, target in links:
        try:
            h5.get("/" + name)
        except RuntimeError as exc:
            if "too many links" in str(exc):
                looped.append(f"/{name} -> {target}")
        except Exception:  # damage elsewhere, not a loop
            continue
    if not looped:
        return None
    more = f" and {len(looped) - 4} more" if len(looped) > 4 else ""
    return (f"soft links lead back to themselves (a loop): {', '.join(looped[:4])}{more}; "
            "fix the links")


def refuse_unread_storage(path, h5: h5py.File, name: str, obj: h5py.Dataset
                          ) -> list[FileVersion]:
    """DataFileError unless every value of ``obj`` (``name`` in the open file ``h5`` at
    ``path``) is stored in this file, or in virtual sources that hold all it maps. Returns
    the other files its values live in (virtual sources, nested ones too), each as it was
    before it was opened: a reader watches them as it watches the file itself."""
    _refuse_external(path, name, obj)
    files: list[FileVersion] = []
    if obj.is_virtual:
        opened: dict = {}  # source files by real path, each opened once for all its sources
        try:
            _check_virtual(path, h5, name, obj, files, opened)
        finally:
            for f in opened.values():
                f.close()
    return files


@dataclass(frozen=True)
class FileVersion:
    """A file as stat saw it: a later stat that differs means it was written or replaced."""

    path: str
    size: int
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileVersion:
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_ino, st.st_mtime_ns)


def _refuse_external(path, name: str, obj: h5py.Dataset, via: str = "") -> None:
    """DataFileError if ``obj`` keeps its values in external raw files (``via``: the
    virtual source it is, for the message)."""
    plist = obj.id.get_create_plist()
    if plist.get_external_count():
        raw = plist.get_external(0)[0].decode(errors="replace")
        raise DataFileError(path, f"{name}{via} keeps its values in the external raw file "
                                  f"{raw}; external storage is not read (HDF5 reads zeros "
                                  "past its end): copy the data into the file")


MAX_VIRTUAL_DEPTH = 8  # virtual datasets mapping virtual datasets: far above any real layout


def _check_virtual(path, h5, name, obj, files: list, opened: dict, seen: tuple = ()) -> None:
    """Every value of the virtual ``obj`` mapped once at least, from sources that exist and
    hold the values mapped; a source that is itself virtual is checked the same way. A
    mapping that leads back to a dataset on its way (HDF5 recurses until it crashes) or
    nests too deep is refused."""
    key = (os.path.realpath(h5.filename), obj.name)
    if key in seen or len(seen) >= MAX_VIRTUAL_DEPTH:
        what = "maps itself" if key in seen else f"nests more than {MAX_VIRTUAL_DEPTH} deep"
        chain = " -> ".join(f"{os.path.basename(f)}:{n}" for f, n in (*seen, key))
        raise DataFileError(path, f"{name} is a virtual dataset that {what} (through "
                                  f"{chain}); HDF5 cannot read it: copy the complete data in")
    seen = (*seen, key)
    base = os.path.dirname(os.path.abspath(h5.filename))
    sources = obj.virtual_sources()
    prefix = obj.id.get_access_plist().get_virtual_prefix().decode(errors="replace")
    for src in sources:
        if src.file_name == ".":
            _check_source(path, name, h5, src, files, seen, opened)
            continue
        full = _source_file(src.file_name, base, prefix)
        if full is None:
            nested = os.path.realpath(h5.filename) != os.path.realpath(path)
            named = f" (named by {h5.filename}:{obj.name})" if nested else ""
            raise DataFileError(path, f"{name} is a virtual dataset whose source file "
                                      f"{src.file_name}{named} is missing; copy it next to "
                                      f"{h5.filename if nested else 'the file'}")
        if not os.path.isfile(full):  # a FIFO or device: opening it would block or never end
            raise DataFileError(path, f"{name} is a virtual dataset whose source file {full} "
                                      "is not a regular file (a pipe or device); copy the data "
                                      "in")
        try:
            version = FileVersion.of(full)  # before it is opened: a change from here on is seen
            if all(f.path != version.path for f in files):
                files.append(version)
            _check_source(path, name, _open_once(full, opened), src, files, seen, opened)
        except (OSError, RuntimeError) as exc:
            raise DataFileError(path, f"{name} is a virtual dataset whose source file "
                                      f"{src.file_name} cannot be read ({exc})") from None
    mapped = _mapped(sources)
    if mapped < obj.size:
        raise DataFileError(path, f"{name} is a virtual dataset that maps {mapped:,} of its "
                                  f"{obj.size:,} values (the rest would read as its fill "
                                  "value); copy the complete data in")


def _source_file(file_name: str, base: str, prefix: str) -> str | None:
    """Where HDF5 finds a virtual source file (H5Pset_virtual_prefix): the name itself when
    absolute, else its relative part (an absolute name's last component) under each folder
    of the dataset's virtual prefix (HDF5_VDS_PREFIX as HDF5 read it), the virtual file's
    folder and the working folder; None if in none. A beamline file names its sources by
    absolute paths of that machine: copied with them into one folder it is still read."""
    if os.path.isabs(file_name) and os.path.exists(file_name):
        return file_name
    rel = os.path.basename(file_name) if os.path.isabs(file_name) else file_name
    prefixes = [p.replace("${ORIGIN}", base) for p in prefix.split(os.pathsep) if p]
    for folder in (*prefixes, base, os.getcwd()):
        candidate = os.path.join(folder, rel)
        if os.path.exists(candidate):
            return candidate
    return None


def _check_source(path, name, h5, src, files, seen, opened: dict) -> None:
    """The source ``src`` of ``name`` (in the open file ``h5``) holds every value mapped,
    in that file: an external link there is refused as in the data file (HDF5 follows it to
    a file that no watch, fingerprint or stamp would see)."""
    link = external_link(h5, src.dset_name)
    if link is not None:
        raise DataFileError(path, f"{name} is a virtual dataset whose source {src.file_name}:"
                                  f"{src.dset_name} is an external link to {link.filename}:"
                                  f"{link.path}; external links are not read: copy the data in")
    ds = h5.get(src.dset_name)
    want = src.vspace.get_select_npoints()
    held = int(ds.size or 0) if isinstance(ds, h5py.Dataset) else -1
    space = src.src_space
    if held >= want > 0 and ds.shape is not None and space.get_select_type() in (
            h5py.h5s.SEL_HYPERSLABS, h5py.h5s.SEL_POINTS):  # (all: the whole source)
        hi = space.get_select_bounds()[1]
        if len(hi) != len(ds.shape) or any(h >= n for h, n in zip(hi, ds.shape, strict=True)):
            raise DataFileError(path, f"{name} is a virtual dataset that maps values beyond the "
                                      f"end of its source {src.file_name}:{src.dset_name} "
                                      f"(shape {ds.shape}; HDF5 would read its fill value "
                                      "instead); copy the complete data in")
    if held < want:
        what = "is missing" if held < 0 else f"holds {held:,} of the {want:,} values mapped"
        raise DataFileError(path, f"{name} is a virtual dataset whose source "
                                  f"{src.file_name}:{src.dset_name} {what} (HDF5 would read "
                                  "its fill value instead); copy the complete data in")
    _refuse_external(path, name, ds, f" (through its virtual source {src.file_name}:"
                                     f"{src.dset_name})")
    if never_written(ds):
        raise DataFileError(path, f"{name} is a virtual dataset whose source {src.file_name}:"
                                  f"{src.dset_name} was never (or only in part) written (HDF5 "
                                  "would read its fill value instead); copy the complete data in")
    if ds.is_virtual:
        _check_virtual(path, h5, name, ds, files, opened, seen)


def _mapped(sources) -> int:
    """Values of the virtual dataset that some source maps: the union of the mappings (two
    sources mapping one region count it once)."""
    if not sources:
        return 0
    union = sources[0].vspace.copy()
    for src in sources[1:]:
        if union.get_select_type() == h5py.h5s.SEL_ALL:
            break
        if src.vspace.get_select_type() == h5py.h5s.SEL_ALL:
            union = src.vspace.copy()
            break
        union.modify_select(src.vspace, h5py.h5s.SELECT_OR)
    return int(union.get_select_npoints())


def holds_sequences(tid) -> bool:
    """Whether the HDF5 type ``tid`` is or holds a variable-length sequence (not a string).
    Nothing homodyne reads is one, and reading one whose type is damaged segfaults HDF5:
    one flipped byte makes a variable-length string's type such a sequence."""
    kind = tid.get_class()
    if kind == h5py.h5t.VLEN:
        return True
    if kind == h5py.h5t.ARRAY:
        return holds_sequences(tid.get_super())
    if kind == h5py.h5t.COMPOUND:
        return any(holds_sequences(tid.get_member_type(i)) for i in range(tid.get_nmembers()))
    return False


SEQUENCES = ("holds variable-length sequences, which no APS or homodyne file stores there "
             "(a damaged type?); re-export or copy the file again")


def not_real_numbers(ds: h5py.Dataset, name: str) -> str | None:
    """What is wrong with a dataset whose type reads as numbers it does not hold, else
    None: complex values (converting drops the imaginary part without a word), an enum
    (read as its integer codes, not the values its names stand for), variable-length
    sequences (see ``holds_sequences``) or a float type NumPy cannot hold."""
    if holds_sequences(ds.id.get_type()):
        return f"{name} {SEQUENCES}"
    try:
        dtype = ds.dtype
    except (ValueError, TypeError) as exc:  # an HDF5 float wider than any NumPy type, a
        # string of an unknown encoding (a damaged type field)
        return (f"{name} has an HDF5 data type NumPy cannot hold ({exc}); store it as "
                "float64")
    enum = h5py.check_enum_dtype(dtype)
    if enum is not None:
        names = ", ".join(f"{k}={v}" for k, v in sorted(enum.items(), key=lambda kv: kv[1])[:4])
        return f"{name} holds enum codes ({names}), not numbers; store its values as numbers"
    if dtype.kind == "c":
        return (f"{name} holds complex numbers ({dtype}), not real ones; store its real "
                "values")
    return None


def declared_bytes(ds: h5py.Dataset) -> int:
    """What reading ``ds`` whole would allocate, from its header alone (the HDF5 type's
    size, never a NumPy dtype: an element of an HDF5 array type may declare gigabytes, or
    more than NumPy can describe)."""
    return int(ds.size or 0) * int(ds.id.get_type().get_size())


def never_written(ds) -> bool:
    """Whether part of a dataset's storage was never written, so that HDF5 would return
    its fill value there: contiguous storage never allocated, or chunks missing."""
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        return bool(ds.size) and ds.id.get_offset() is None and plist.get_external_count() == 0
    if layout == h5py.h5d.CHUNKED:
        chunks = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True)]))
        return ds.id.get_num_chunks() < chunks
    return False


def unreadable(ds, name, exc, where: str) -> str:
    """Why a dataset cannot be read: a compression filter this HDF5 lacks is named with the
    fix (it is a good file), anything else as HDF5 says it."""
    try:
        plist = ds.id.get_create_plist()
        lacking = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        lacking = [(code, label.decode(errors="replace")) for code, _, _, label in lacking
                   if not h5py.h5z.filter_avail(code)]
    except (OSError, RuntimeError, ValueError):
        lacking = []
    if lacking:
        names = ", ".join(f"{code}{f' ({label})' if label else ''}" for code, label in lacking)
        return (f"cannot read {name}: it is compressed with HDF5 filter {names}, which this "
                "installation lacks; install the filter's plugin (e.g. pip install hdf5plugin, "
                "then set HDF5_PLUGIN_PATH) or export the file without it")
    return f"cannot read {name} ({where}): {exc}"
