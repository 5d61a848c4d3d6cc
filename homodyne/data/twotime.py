"""Two-time correlation sources: APS 8-ID-I HDF5 (older and APS-U layouts) and bare .npy.

A ``TwoTimeSource`` describes the selection (q, angles, frames) and reads the strict
upper triangle of each selected matrix with bounded memory: row blocks in file
order, or fixed-size runs of consecutive points (what a streaming engine wants).
Points are ordered angle-major, then row-major inside the triangle, matching
``homodyne.model.point_coordinates``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import h5py
import numpy as np

from homodyne.data.errors import DataFileError, QBinError, data_file
from homodyne.data.h5storage import (
    FileVersion,
    dangling_soft_link,
    declared_bytes,
    external_link,
    holds_sequences,
    not_real_numbers,
    one_object_twice,
    refuse_unread_storage,
    soft_link_loop,
    unreadable,
)
from homodyne.data.npyfile import npy_file_header
from homodyne.data.vlenheap import holds_vlen_strings, vlen_string_problem
from homodyne.model import (
    MAX_ABS_PHI_DEG,
    ModelSpec,
    TriangleGrid,
    angle_problem,
    frame_time_problem,
    same_angle_pair,
    triu_row,
    triu_row_start,
    whole_number,
)

log = logging.getLogger(__name__)

OLD_Q = "/xpcs/dqlist"
OLD_PHI = "/xpcs/dphilist"
OLD_C2 = "/exchange/C2T_all"
APSU_Q = "/xpcs/qmap/dynamic_v_list_dim0"
APSU_PHI = "/xpcs/qmap/dynamic_v_list_dim1"
APSU_BINS = "/xpcs/twotime/processed_bins"
APSU_C2 = "/xpcs/twotime/correlation_map"
FRAME_TIME = "/entry/instrument/detector_1/frame_time"
SYNTHETIC_ATTRS = "/homodyne/synthetic"
MAX_NPY_BYTES = 1 << 34  # a bare .npy matrix is read whole: 16 GiB (46k x 46k float64) at most


@dataclass(frozen=True)
class RowBlock:
    """Rows [row_start, row_stop) of one angle's strict upper triangle, packed."""

    angle: int
    row_start: int
    row_stop: int
    g_start: int
    values: np.ndarray


@dataclass
class TwoTimeSource(TriangleGrid):
    """A selection of two-time matrices from one file, read lazily."""

    path: str
    layout: str  # "aps_old", "aps_u" or "npy"
    dataset_names: list[str]
    q: float
    q_requested: float | None
    phi_deg: tuple[float, ...]
    first_frame: int
    last_frame: int
    storages: list[str]  # per angle: "upper", "lower" or "full"
    frame_time: float | str | None = None  # a string says what is wrong with the file's
    attrs: dict = field(default_factory=dict)
    file_size: int | None = None  # bytes at open; a shrinking file is refused mid-fit
    file_version: tuple | None = None  # (inode, mtime_ns) at open: a changed file too
    source_files: tuple[FileVersion, ...] = ()  # other files a virtual matrix reads, at open
    _matrix: np.ndarray | None = field(default=None, repr=False)
    _h5: h5py.File | None = field(default=None, repr=False)

    # --- sizes ------------------------------------------------------------
    @property
    def storage(self) -> str:
        """How the matrices are stored ("upper", "lower", "full", or "mixed")."""
        kinds = set(self.storages)
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def q_tolerance(self) -> float:
        return 0.0 if self.q_requested is None else abs(self.q - self.q_requested)

    @property
    def n_frames(self) -> int:
        return self.last_frame - self.first_frame + 1

    def model_spec(self, *, mode="static", dt=None, gap_h=2.0e6, scaling="individual",
                   dtype="float64", exclude_diagonal_frames: int = 0) -> ModelSpec:
        """The ModelSpec matching this selection (dt from the file when not given)."""
        if dt is not None and (isinstance(dt, str | bool | np.bool_)
                               or not isinstance(dt, numbers.Real)):  # not the file's fault
            raise ValueError(f"dt must be a number of seconds per frame (None: the file's "
                             f"frame time), got {dt!r}")
        dt = dt if dt is not None else self.frame_time
        if dt is None:
            raise DataFileError(self.path, "no frame time in the file; set 'dt' in the config")
        if isinstance(dt, str):
            raise DataFileError(self.path, f"{dt}; fix the file or set 'dt' in the config")
        return ModelSpec(mode=mode, q=self.q, dt=float(dt), n_frames=self.n_frames,
                         phi_deg=self.phi_deg, gap_h=gap_h, scaling=scaling,
                         first_frame=self.first_frame, dtype=dtype,
                         exclude_diagonal_frames=exclude_diagonal_frames)

    # --- file access --------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None:
            try:
                self._h5 = h5py.File(self.path, "r")
            except (OSError, RuntimeError) as exc:
                raise DataFileError(self.path, f"cannot open as HDF5 ({exc})") from exc
        return self._h5

    def check_unchanged(self) -> None:
        """Refuse to go on reading a file that shrank since it was opened (HDF5 would
        return fill values, zeros, past its end instead of an error), or that was written
        or replaced meanwhile (later passes would fit other data than the first, and the
        results would name a file that no longer holds what was fitted)."""
        if self.file_size is None:
            return
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise DataFileError(self.path, f"disappeared while being read ({exc})") from exc
        if st.st_size < self.file_size:
            raise DataFileError(self.path, f"was truncated while being read ({self.file_size:,} "
                                f"bytes at open, {st.st_size:,} now); restore the complete file "
                                "and run again")
        if self.file_version is not None and (st.st_ino, st.st_mtime_ns) != self.file_version:
            how = "replaced" if st.st_ino != self.file_version[0] else "written to"
            raise DataFileError(self.path, f"was {how} while being read (by another program?); "
                                "the fit would mix two versions of the data - run again once "
                                "the file is complete")
        for src in self.source_files:
            self._check_source_unchanged(src)

    def _check_source_unchanged(self, src: FileVersion) -> None:
        """The same refusal for a file a virtual matrix keeps its values in."""
        try:
            now = FileVersion.of(src.path)
        except OSError as exc:
            raise DataFileError(self.path, f"virtual source file {src.path} disappeared while "
                                           f"being read ({exc}); restore it and run again") \
                from exc
        if now == src:
            return
        how = ("truncated" if now.size < src.size else
               "replaced" if now.inode != src.inode else "written to")
        raise DataFileError(self.path, f"virtual source file {src.path} was {how} while being "
                                       "read (by another program?); the fit would mix two "
                                       "versions of the data - run again once it is complete")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read_rows(self, angle: int, r0: int, r1: int, c0: int = 0, *,
                   as_stored: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """Rows r0..r1-1 x columns c0..n-1 (selection-relative): float64, or in the file's
        dtype with ``as_stored`` (a caller can select first), or read straight into the
        flat scratch ``out`` (no allocation; returns a view of it)."""
        f0 = self.first_frame - 1
        n = self.n_frames
        if self._matrix is not None:
            block = self._matrix[f0 + r0 : f0 + r1, f0 + c0 : f0 + n]
            self._refuse_absurd(angle, r0, c0, block)  # as for HDF5 data
            return block if as_stored or out is not None else block.astype(np.float64)
        ds = self._file()[self.dataset_names[angle]]
        lower = self.storages[angle] == "lower"
        sel = np.s_[f0 + c0 : f0 + n, f0 + r0 : f0 + r1] if lower else \
            np.s_[f0 + r0 : f0 + r1, f0 + c0 : f0 + n]
        try:
            if out is not None:
                shape = (n - c0, r1 - r0) if lower else (r1 - r0, n - c0)
                block = out[: shape[0] * shape[1]].reshape(shape)
                ds.read_direct(block, sel)
            else:
                block = ds[sel]
            self.check_unchanged()
        except (OSError, RuntimeError, TypeError) as exc:
            raise DataFileError(self.path, unreadable(
                ds, self.dataset_names[angle], exc, f"rows {r0}..{r1}")) from exc
        block = block.T if lower else block
        self._refuse_absurd(angle, r0, c0, block)
        return block if as_stored or out is not None else np.asarray(block, dtype=np.float64)

    def _refuse_absurd(self, angle: int, r0: int, c0: int, block: np.ndarray) -> None:
        """DataFileError if a point of ``block`` (rows r0.., columns c0..; the points are
        above the diagonal) is finite but beyond MAX_ABS_C2: its square overflows the fit's
        sums, which was reported as the model overflowing at the user's start."""
        if block.dtype.kind != "f" or float(np.finfo(block.dtype).max) <= MAX_ABS_C2:
            return  # (float32 cannot hold such values)
        big = np.abs(block) > MAX_ABS_C2
        if not big.any():
            return
        rows, cols = np.nonzero(big)
        above = r0 + rows < c0 + cols
        if not above.any():
            return
        i, j = int(r0 + rows[above][0]), int(c0 + cols[above][0])
        f0 = self.first_frame
        raise DataFileError(self.path, f"{self.dataset_names[angle]} holds "
                                       f"{float(block[rows[above][0], cols[above][0]]):.3g} "
                                       f"at frames ({f0 + i}, {f0 + j}): a two-time "
                                       f"correlation is of order 1 and values beyond "
                                       f"{MAX_ABS_C2:g} cannot be fitted (their squares "
                                       "overflow); the file is damaged - set bad points "
                                       "to NaN to leave them out")

    def _row_offset(self, r: int) -> int:
        return triu_row_start(r, self.n_frames)

    def iter_row_blocks(self, target_points: int = 1 << 20, start_point: int = 0
                        ) -> Iterator[RowBlock]:
        """Row blocks of about ``target_points`` points, in global point order.

        Starts at the row holding global point ``start_point`` (the block may begin
        before it; ``g_start`` says where). Memory is one block at a time.
        """
        n = self.n_frames
        m = self.points_per_angle
        a0 = start_point // m
        for angle in range(a0, self.n_phi):
            r = 0
            if angle == a0:
                k = start_point - a0 * m
                r = _row_of(k, n)
            while r < n - 1:
                rows = max(1, target_points // max(1, n - 1 - r))
                r1 = min(n - 1, r + rows)
                # only the columns right of the diagonal: the read stays about
                # target_points however wide the matrix is
                block = self.read_rows(angle, r, r1, r + 1, as_stored=True)
                mask = np.arange(r + 1, n)[None, :] > np.arange(r, r1)[:, None]
                values = block[mask].astype(np.float64)
                del block
                yield RowBlock(angle, r, r1, angle * m + self._row_offset(r), values)
                r = r1

    def iter_points(self, start: int, count: int, chunk: int,
                    target_points: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive runs of ``chunk`` points from global index ``start`` (last may be
        short), each an array of its own (``iter_points_into`` reuses buffers)."""
        for pos, buf, n in self.iter_points_into(start, count, chunk, ring=1,
                                                 target_points=target_points):
            yield pos, buf[:n].copy()

    def iter_points_into(self, start: int, count: int, chunk: int, *, ring: int = 3,
                         dtype=np.float64, target_points: int = 1 << 19
                         ) -> Iterator[tuple[int, np.ndarray, int]]:
        """Consecutive runs of ``chunk`` points from global index ``start``, written into
        a ring of ``ring`` preallocated buffers: yields (first point, buffer, n valid);
        the tail of the last buffer is zero. A buffer is overwritten ``ring`` yields
        later, so memory is fixed (ring buffers + one read scratch) at any data size."""
        stop = min(self.n_points, start + count)
        if stop <= start:
            return
        n, m = self.n_frames, self.points_per_angle
        stored = self._matrix.dtype if self._matrix is not None else \
            self._file()[self.dataset_names[0]].dtype
        scratch = np.empty(max(target_points, n) + n, dtype=stored)
        bufs = [np.empty(chunk, dtype=dtype) for _ in range(max(1, ring))]
        k, fill, pos, buf_pos = 0, 0, start, start
        for angle in range(start // m, self.n_phi):
            r = _row_of(pos - angle * m, n) if angle == start // m else 0
            while r < n - 1 and pos < stop:
                rows = max(1, min(n - 1 - r, target_points // max(1, n - 1 - r)))
                rect = self.read_rows(angle, r, r + rows, r + 1, out=scratch)
                for i in range(rows):
                    row_start = angle * m + self._row_offset(r + i)
                    seg = rect[i, i + max(0, pos - row_start):]
                    seg = seg[: stop - pos]
                    while seg.size:
                        take = min(seg.size, chunk - fill)
                        bufs[k][fill : fill + take] = seg[:take]
                        fill += take
                        pos += take
                        seg = seg[take:]
                        if fill == chunk:
                            yield buf_pos, bufs[k], chunk
                            k, fill, buf_pos = (k + 1) % len(bufs), 0, pos
                    if pos >= stop:
                        break
                r += rows
            if pos >= stop:
                break
        if fill:
            bufs[k][fill:] = 0
            yield buf_pos, bufs[k], fill

    def read_packed(self, dtype=np.float64) -> np.ndarray:
        """All selected points in memory (angle-major, row-major triangle)."""
        out = np.empty(self.n_points, dtype=dtype)
        for blk in self.iter_row_blocks():
            out[blk.g_start : blk.g_start + blk.values.size] = blk.values
        return out

    def read_on_frames(self, angle: int, idx) -> np.ndarray:
        """Symmetric matrix on a subset of frames (selection-relative indices, sorted),
        built from the upper triangle one row at a time: bounded memory at any size."""
        idx = np.asarray(idx, int)
        out = np.full((idx.size, idx.size), np.nan)
        for a, r in enumerate(idx):
            row = self.read_rows(angle, r, r + 1, r)[0]
            out[a, a:] = row[idx[a:] - r]
        upper = np.triu(out, 1)
        return upper + upper.T + np.diag(np.diag(out))


def _row_of(k: int, n: int) -> int:
    """Row of position k in the strict upper triangle (exact integer version)."""
    return int(triu_row(np.int64(k), n, np))


# --- opening and selecting ----------------------------------------------------


def open_two_time(path, *, q: float | None = None, q_tolerance: float | None = None,
                  phi_ranges=None, start_frame: int = 1, end_frame: int = -1) -> TwoTimeSource:
    """Open a two-time file and select q (nearest), angle ranges and frames.

    ``phi_ranges`` is a list of (min_deg, max_deg) pairs, None for all angles.
    Frames are 1-based and inclusive; ``end_frame=-1`` means the last frame.
    Everything is validated here, before any long computation starts.
    """
    q, q_tolerance, phi_ranges, start_frame, end_frame = check_selection(
        q, q_tolerance, phi_ranges, start_frame, end_frame)
    path = data_file(path)
    if path.endswith(".npy"):
        if _magic(path) == HDF5_MAGIC:
            raise DataFileError(path, "is an HDF5 file named .npy; rename it to .h5")
        return _open_npy(path, q, start_frame, end_frame)
    st = os.stat(path)  # before the file is opened: a change from here on is seen
    size, version = st.st_size, (st.st_ino, st.st_mtime_ns)
    h5 = _open_h5(path)
    try:
        if APSU_BINS in h5 and APSU_C2 in h5:
            layout, entries = "aps_u", _entries_apsu(path, h5)
        elif OLD_Q in h5 and OLD_C2 in h5:
            layout, entries = "aps_old", _entries_old(path, h5)
        else:
            raise DataFileError(
                path,
                "not an APS two-time result: expected either "
                f"{APSU_BINS} + {APSU_C2} (APS-U) or {OLD_Q} + {OLD_C2} (older layout)",
            )
        q_sel, chosen = _select(path, entries, q, q_tolerance, phi_ranges)
        names = [name for (_, _, name) in chosen]
        phis = tuple(float(phi) for (_, phi, _) in chosen)
        sources: list[FileVersion] = []
        n_file = _check_matrices(path, h5, names, sources)
        twice = one_object_twice(h5, names)
        if twice:
            raise DataFileError(path, twice)
        storages = [_detect_storage(h5[name]) for name in names]
        frame_time = _frame_time(h5)
        attrs = _plain_attrs(h5[SYNTHETIC_ATTRS]) if SYNTHETIC_ATTRS in h5 else {}
        _check_extents(path, h5, names, size)
        _check_written(path, h5, names, storages)
    except (OSError, RuntimeError, KeyError) as exc:
        loop = soft_link_loop(h5) if isinstance(exc, RuntimeError) else None
        if loop:  # a good file with one bad link, not damage
            raise DataFileError(path, loop) from exc
        # HDF5 reports corrupt metadata as any of these, from anywhere in the file
        raise DataFileError(path, f"corrupt HDF5 metadata ({type(exc).__name__}: {exc}); "
                                  "re-export or copy the file again") from exc
    finally:
        h5.close()
    first, last = _frame_range(path, start_frame, end_frame, n_file)
    return TwoTimeSource(path=path, layout=layout, dataset_names=names, q=q_sel,
                         q_requested=q, phi_deg=phis, first_frame=first,
                         last_frame=last, storages=storages, frame_time=frame_time, attrs=attrs,
                         file_size=size, file_version=version, source_files=tuple(sources))


def _plain_attrs(group) -> dict:
    """The attributes of ``group`` (a synthetic file's truth: labels only) that can be
    read: not those of a type holding variable-length sequences (reading a damaged one
    segfaulted) or variable-length strings (a damaged global heap or reference hangs
    HDF5, and an attribute's references cannot be checked before it is read: ``homodyne
    generate`` writes fixed-length strings), nor those h5py cannot convert (a string of
    an unknown encoding). Fixed-length strings read as ``str`` (as variable-length did)."""
    out = {}
    for name in group.attrs:
        try:
            tid = group.attrs.get_id(name).get_type()
            if holds_vlen_strings(tid):
                log.debug("%s: attribute %s of %s holds variable-length strings, which are "
                          "not read (a damaged one hangs HDF5); left out", group.file.filename,
                          name, group.name)
            elif not holds_sequences(tid):
                out[name] = _text(group.attrs[name])
        except (TypeError, ValueError):
            continue  # left out: it only labels the results
    return out


def _text(value):
    """A fixed-length string attribute (NumPy bytes) as ``str``; other values unchanged."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return np.array([v.decode("utf-8", errors="replace") for v in value.ravel()],
                        dtype=object).reshape(value.shape)
    return value


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _open_h5(path) -> h5py.File:
    """The file opened read-only, or a DataFileError that says why not."""
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError) as exc:
        if "unable to lock file" in str(exc):
            raise DataFileError(path, "is open for writing by another program (HDF5 file "
                                      "lock); wait until it is closed - reading a file while "
                                      "it is written gives inconsistent data") from exc
        if "file signature not found" in str(exc) and path.lower().endswith(ONE_TIME_TABLES):
            # HDF5 looked for its signature everywhere: a good table, not a damaged file
            raise DataFileError(path, "is a one-time g2 table, not two-time HDF5 data; set "
                                      "analysis_mode: one_time to fit it") from exc
        raise DataFileError(path, f"not a readable HDF5 file (truncated or corrupt?): {exc}") \
            from exc


ONE_TIME_TABLES = (".csv", ".npz")


def _magic(path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc}") from exc


def _check_extents(path, h5, names, size) -> None:
    """A contiguous dataset must lie inside the file: past its end HDF5 reads zeros."""
    for name in names:
        ds = h5[name]
        offset = ds.id.get_offset()
        if offset is not None and offset + ds.id.get_storage_size() > size:
            raise DataFileError(path, f"{name} extends past the end of the file "
                                      f"({size:,} bytes): the file is truncated; copy it again")


def _chunk_rows(n: int, rows: int, cols: int, storage: str):
    """Per chunk row i, the first chunk column j holding a point of the stored part of an
    n x n matrix in (rows x cols) chunks: above the diagonal ("upper"), all ("full");
    "lower" is the mirror image (transpose the chunk shape and the result)."""
    n_r, n_c = -(-n // rows), -(-n // cols)
    first_row = np.arange(n_r, dtype=np.int64) * rows
    if storage == "full":
        return np.zeros(n_r, np.int64), n_c
    # chunk column j holds a point above the diagonal of chunk row i when its last
    # column lies right of the row's first point: (j+1) cols - 1 > i rows
    j_min = (first_row + 1) // cols
    return np.where(first_row + 1 < n, j_min, n_c), n_c


def _chunks_missing(ds, storage: str) -> tuple[int, int]:
    """(chunks of the stored part never written, chunks that part has)."""
    n = ds.shape[0]
    rows, cols = ds.chunks if storage != "lower" else ds.chunks[::-1]
    j_min, n_c = _chunk_rows(n, rows, cols, storage)
    need = int(np.sum(n_c - j_min))
    have = ds.id.get_num_chunks()
    if have < need:  # cheap: too few chunks at all (a file declaring far more than it holds)
        return need - have, need
    if have >= (-(-n // rows)) * n_c:  # every chunk of the matrix exists
        return 0, need
    written = set()
    for k in range(have):
        r, c = ds.id.get_chunk_info(k).chunk_offset
        written.add((r // rows, c // cols) if storage != "lower" else (c // rows, r // cols))
    missing = sum(1 for i, j0 in enumerate(j_min) for j in range(int(j0), n_c)
                  if (i, j) not in written)
    return missing, need


def _check_written(path, h5, names, storages) -> None:
    """Refuse a matrix part of which was never written (HDF5 returns its fill value,
    e.g. zeros, which would be fitted as data): a writer stopped early, a dataset grown
    and not filled. Contiguous storage must exist; a chunked matrix needs every chunk
    of the half (or whole) it stores."""
    for name, storage in zip(names, storages, strict=True):
        ds = h5[name]
        layout = ds.id.get_create_plist().get_layout()
        if layout == h5py.h5d.CONTIGUOUS and ds.id.get_offset() is None and \
                ds.id.get_create_plist().get_external_count() == 0:
            missing = "none of it was ever written"
        elif layout == h5py.h5d.CHUNKED:
            lost, need = _chunks_missing(ds, storage)
            if not lost:
                continue
            missing = f"{lost:,} of the {need:,} chunks of its {storage} part were never written"
        else:
            continue
        raise DataFileError(path, f"{name} is incomplete: {missing} (HDF5 would read its fill "
                                  "value there as data); the writer stopped early - copy or "
                                  "export the file again")


def q_bins(path) -> list[float]:
    """The q values of a two-time file's bins, sorted ([1.0] for a bare .npy matrix, which
    carries no q); reads only the small q/phi maps."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        return [1.0]
    with _open_h5(path) as h5:
        if APSU_BINS in h5 and APSU_C2 in h5:
            entries = _entries_apsu(path, h5)
        elif OLD_Q in h5 and OLD_C2 in h5:
            entries = _entries_old(path, h5)
        else:
            raise DataFileError(path, "not an APS two-time result (no q map / c2 matrices)")
    return sorted({float(e[0]) for e in entries})


def _open_npy(path, q, start_frame, end_frame) -> TwoTimeSource:
    shape, dtype = npy_file_header(path, max_bytes=MAX_NPY_BYTES)  # before a byte of data
    if len(shape) != 2 or shape[0] != shape[1]:
        raise DataFileError(path, f"expected a square two-time matrix, got shape {shape}")
    if not np.issubdtype(dtype, np.floating):
        raise DataFileError(path, f"expected floating-point values, got dtype {dtype}")
    if shape[0] < 2:  # named as the HDF5 reader names it (was "no finite values" for 0x0)
        raise DataFileError(path, f"the matrix is {shape[0]}x{shape[0]}; a two-time matrix "
                                  "needs at least 2 frames")
    try:
        m = np.load(path, allow_pickle=False)
    except (ValueError, OSError, TypeError) as exc:
        raise DataFileError(path, f"not a readable .npy array: {exc}") from exc
    _check_values(path, "matrix", m)
    first, last = _frame_range(path, start_frame, end_frame, m.shape[0])
    storage = _detect_storage(m)
    if storage == "lower":  # read as the upper triangle it mirrors (a view, no copy)
        m, storage = m.T, "upper"
    return TwoTimeSource(path=path, layout="npy", dataset_names=["matrix"],
                         q=1.0 if q is None else float(q), q_requested=q, phi_deg=(0.0,),
                         first_frame=first, last_frame=last, storages=[storage], _matrix=m)


def _local(path, h5, name) -> None:
    """Refuse a name that leads (itself or through a parent group) to another file."""
    link = external_link(h5, name)
    if link is not None:
        raise DataFileError(path, f"{name} is an external link to {link.filename}; "
                                  "external links are not read: copy the data into the file")


def _dataset(path, h5, name, sources: list | None = None) -> h5py.Dataset:
    """``h5[name]`` as a dataset of this file: a group, or data that lives in another file (an
    external link, a virtual dataset whose source is missing), is named, never read as zeros.
    The files a virtual dataset reads are added to ``sources`` (new ones only)."""
    _local(path, h5, name)
    dangling = dangling_soft_link(h5, name)
    if dangling:
        raise DataFileError(path, dangling)
    if name not in h5:
        raise DataFileError(path, f"missing dataset {name}")
    obj = h5[name]
    if not isinstance(obj, h5py.Dataset):
        raise DataFileError(path, f"{name} is a {type(obj).__name__.lower()}, expected a dataset")
    files = refuse_unread_storage(path, h5, name, obj)
    if sources is not None:
        sources.extend(f for f in files if all(s.path != f.path for s in sources))
    return obj


MAX_MAP_VALUES = 1_000_000  # q, phi, bins or frame times in one file: far above any real map


def _read(path, h5, name, max_values: int = MAX_MAP_VALUES):
    """A small dataset read whole, after its declared size is checked: a file of a few
    kB may declare billions of values (never written), which would be allocated."""
    ds = _dataset(path, h5, name)
    if ds.size is not None and ds.size > max_values:
        raise DataFileError(path, f"{name} declares {ds.size:,} values, at most "
                                  f"{max_values:,} expected; the file is damaged or not an "
                                  "APS two-time result")
    if declared_bytes(ds) > 8 * max_values:  # one value of an HDF5 array type can be GBs
        raise DataFileError(path, f"{name} declares {declared_bytes(ds):,} bytes ("
                                  f"{ds.size:,} value(s) of {ds.id.get_type().get_size():,} "
                                  "bytes each), not a list of numbers; the file is damaged "
                                  "or not an APS two-time result")
    problem = not_real_numbers(ds, name) or vlen_string_problem(h5, ds, name)
    if problem:  # (a damaged variable-length string hung HDF5's read)
        raise DataFileError(path, problem)
    return np.asarray(ds[()])


def _numbers(path, h5, name, dtype=float) -> np.ndarray:
    """A small map (q, phi, bins) as a flat numeric array, or a DataFileError naming it."""
    values = _read(path, h5, name)
    if values.dtype.kind == "b":  # True/False would read as 1/0
        raise DataFileError(path, f"{name} holds booleans ({values.ravel().tolist()[:8]}), "
                                  "not numbers; fix the file's map")
    try:
        return values.ravel().astype(dtype)
    except (TypeError, ValueError) as exc:
        raise DataFileError(path, f"{name} does not hold numbers ({exc})") from None


def _sorted_c2(path, h5, group) -> list[str]:
    _local(path, h5, group)
    keys = list(h5[group].keys())
    odd = [k for k in keys if not isinstance(k, str)]  # h5py gives bytes for a non-UTF-8 name
    if odd:
        raise DataFileError(path, f"{group} holds a member whose name is not UTF-8 text "
                                  f"({odd[0]!r}); rename it (c2_NNNNN) or remove it")
    names = sorted(k for k in keys if k.startswith("c2_"))
    if not names:
        raise DataFileError(path, f"no c2_* matrices under {group}")
    return [f"{group}/{k}" for k in names]


def _finite(path, name, values, what="q"):
    if not np.all(np.isfinite(values)):
        raise DataFileError(path, f"{name} holds non-finite {what} values "
                                  f"({values.tolist()[:8]}); fix the file's q map")
    if what == "phi" and angle_problem(values):  # (1e300 deg was "one angle" with 0 deg)
        raise DataFileError(path, f"{name} holds angles beyond +/-{MAX_ABS_PHI_DEG:g} deg "
                                  f"({values.tolist()[:8]}); fix the file's phi map")
    if what == "q" and not np.all(values > 0):  # q = 0 or < 0: no decay to fit (ModelSpec
        raise DataFileError(path, f"{name} holds q values <= 0 "  # refused it: a traceback)
                                  f"({values.tolist()[:8]}); fix the file's q map")
    return values


def _entries_apsu(path, h5):
    qs = _finite(path, APSU_Q, _numbers(path, h5, APSU_Q))
    phis = _finite(path, APSU_PHI, _numbers(path, h5, APSU_PHI), "phi")
    bins = _numbers(path, h5, APSU_BINS)
    with np.errstate(invalid="ignore"):  # NaN compares false: refused below, no warning
        whole = np.isfinite(bins) & (bins == np.round(bins)) & (np.abs(bins) < 2**31)
    if not np.all(whole):
        raise DataFileError(path, f"{APSU_BINS} must hold whole bin numbers, got "
                                  f"{bins.tolist()[:8]}; fix the file")
    bins = bins.astype(int)
    names = _sorted_c2(path, h5, APSU_C2)
    if len(names) != bins.size:
        raise DataFileError(
            path, f"{APSU_BINS} lists {bins.size} bins but {APSU_C2} holds {len(names)} matrices"
        )
    n_phi = max(1, phis.size)
    out = []
    for b, name in _apsu_pairs(path, names, bins):
        qi, pi = (b - 1) // n_phi, (b - 1) % n_phi
        if b < 1 or qi >= qs.size:
            raise DataFileError(path, f"processed bin {b} is outside the q/phi map "
                                      f"({qs.size} q x {n_phi} phi)")
        out.append((qs[qi], phis[pi] if phis.size else 0.0, name))
    return out


C2_NAME = re.compile(r"c2_(\d+)")


def _apsu_pairs(path, names, bins) -> list[tuple[int, str]]:
    """(bin, matrix) pairs of an APS-U file. boost_corr names the matrices c2_00001,
    c2_00002, ... in the order of processed_bins (c2_K is the K-th bin listed); a file
    whose matrices carry the bin numbers themselves (c2_B for bin B) is read too. Names
    that follow neither (no number, a number twice, numbers that are neither positions nor
    bins, or that read differently either way) are refused: pairing them by sorted name
    would give matrices the wrong angles without a word."""
    numbered: dict[int, str] = {}
    for name in names:
        m = C2_NAME.fullmatch(name.rsplit("/", 1)[-1])
        if m is None:
            raise DataFileError(path, f"{name} is not named c2_NNNNN (NNNNN: its position in "
                                      f"{APSU_BINS}, as boost_corr writes it); the matrices "
                                      "cannot be paired with their q/phi bins - rename it")
        k = int(m.group(1))
        if k in numbered:
            raise DataFileError(path, f"{numbered[k]} and {name} both carry the number {k}; "
                                      "the matrices cannot be paired with their q/phi bins - "
                                      "rename one")
        numbered[k] = name
    listed = [int(b) for b in bins]
    by_position = sorted(numbered) == list(range(1, len(listed) + 1))
    by_bin = sorted(numbered) == sorted(listed)
    if by_position and (not by_bin or all(listed[k - 1] == k for k in numbered)):
        return [(listed[k - 1], numbered[k]) for k in sorted(numbered)]
    if by_bin and not by_position:
        return [(b, numbered[b]) for b in listed]
    shown = ", ".join(str(k) for k in sorted(numbered)[:8])
    why = (f"both their positions 1..{len(listed)} in {APSU_BINS} and, in another order, "
           "the bins it lists") if by_position else \
        f"neither their positions 1..{len(listed)} in {APSU_BINS} nor the bins it lists"
    raise DataFileError(path, f"the matrices under {APSU_C2} are numbered {shown}"
                              f"{', ...' if len(numbered) > 8 else ''}: {why} ({listed[:8]}); "
                              "they cannot be paired with their q/phi bins - name them "
                              "c2_00001, c2_00002, ... in the order of processed_bins")


def _by_number(path, names: list[str]) -> list[str]:
    """The older layout's matrices in the order of their numbers, as its q/phi lists pair
    them: by name, c2_10 would come before c2_2 and take bin 2's q and angle."""
    numbered: dict[int, str] = {}
    for name in names:
        m = C2_NAME.fullmatch(name.rsplit("/", 1)[-1])
        k = int(m.group(1)) if m else None
        if k is None or k in numbered:
            why = f"{numbered[k]} and {name} both carry the number {k}" if k in numbered \
                else f"{name} is not named c2_N (N: its place in {OLD_Q})"
            raise DataFileError(path, f"{why}; the matrices cannot be paired with their q/phi "
                                      "bins - name them c2_00001, c2_00002, ... in the order "
                                      f"of {OLD_Q}")
        numbered[k] = name
    return [numbered[k] for k in sorted(numbered)]


def _entries_old(path, h5):
    qs = _finite(path, OLD_Q, _numbers(path, h5, OLD_Q))
    phis = _finite(path, OLD_PHI, _numbers(path, h5, OLD_PHI), "phi") if OLD_PHI in h5 \
        else np.zeros_like(qs)
    names = _by_number(path, _sorted_c2(path, h5, OLD_C2))
    if not (len(names) == qs.size == phis.size):
        raise DataFileError(path, f"{OLD_Q} ({qs.size}), {OLD_PHI} ({phis.size}) and "
                                  f"{OLD_C2} ({len(names)} matrices) disagree in length")
    return list(zip(qs, phis, names, strict=True))


def _in_ranges(phi, ranges) -> bool:
    return any(lo <= phi <= hi for lo, hi in ranges)


DEFAULT_Q_TOLERANCE = 0.10  # relative: a requested q within 10% of a bin selects it


def _fmt_bins(qs) -> str:
    return ", ".join(f"{v:.6g}" for v in qs)


def _real(name: str, value, *, positive: bool) -> float:
    """One finite real number (numpy/JAX scalars and 0-d arrays too; not a bool or text)."""
    kind = np.asarray(value).dtype.kind if np.ndim(value) == 0 else None
    if isinstance(value, bool) or kind not in ("i", "u", "f"):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {v}")
    return v


def check_selection(q, q_tolerance, phi_ranges, start_frame, end_frame):
    """``open_two_time``'s selection arguments, checked and made plain Python values:
    a wrong type or value is named here, not met later as a numpy error or a silent NaN."""
    q = None if q is None else _real("q", q, positive=True)
    if q_tolerance is not None:
        q_tolerance = _real("q_tolerance", q_tolerance, positive=True)
    if phi_ranges is not None:
        pairs = np.asarray(phi_ranges, dtype=object)
        if pairs.size and (pairs.ndim != 2 or pairs.shape[1] != 2):
            raise ValueError(f"phi_ranges must be a list of (min_deg, max_deg) pairs, got "
                             f"{phi_ranges!r}")
        phi_ranges = [(_real("phi_ranges", lo, positive=False),
                       _real("phi_ranges", hi, positive=False)) for lo, hi in pairs] or None
        for i, (lo, hi) in enumerate(phi_ranges or ()):
            if lo > hi:
                raise ValueError(f"phi_ranges[{i}] is reversed: min {lo} > max {hi}; swap them "
                                 "(a range is [min_deg, max_deg] and does not wrap modulo 360)")
    return (q, q_tolerance, phi_ranges, whole_number("start_frame", start_frame),
            whole_number("end_frame", end_frame))


def _select(path, entries, q, q_tolerance, phi_ranges):
    qs = np.array(sorted({e[0] for e in entries}))
    if q is None:
        if qs.size > 1:
            raise DataFileError(path, f"holds {qs.size} q bins ({_fmt_bins(qs)}); choose one "
                                      "with experimental_data.q (or q: all to fit every bin)")
        q_sel = qs[0]
    else:
        q_sel = qs[np.argmin(np.abs(qs - q))]
        tol = DEFAULT_Q_TOLERANCE * abs(q) if q_tolerance is None else q_tolerance
        if abs(q_sel - q) > tol:
            raise QBinError(path, q, tol, q_sel, _fmt_bins(qs))
    chosen = [e for e in entries if e[0] == q_sel]
    if phi_ranges:
        ranges = [(float(lo), float(hi)) for lo, hi in phi_ranges]
        chosen = [e for e in chosen if _in_ranges(e[1], ranges)]
        if not chosen:
            avail = sorted({float(e[1]) for e in entries if e[0] == q_sel})
            raise DataFileError(path, f"no angle in phi ranges {ranges} at q={q_sel:.6g} "
                                      f"(available: {avail}); ranges are compared with the "
                                      "file's angles as stored, without wrapping modulo 360")
    chosen.sort(key=lambda e: e[1])
    same = same_angle_pair([e[1] for e in chosen])  # one bin listed twice: two matrices
    if same:  # would be fitted as two angles (a laminar fit's phi is wrong)
        a, b = chosen[same[0]], chosen[same[1]]
        at = f"{float(a[1]):g} deg" if a[1] == b[1] else \
            f"{float(a[1]):g} and {float(b[1]):g} deg (one angle modulo 360)"
        raise DataFileError(path, f"{a[2]} and {b[2]} are both at q = {q_sel:.6g}, phi = {at}: "
                                  "the file lists one (q, phi) bin twice (in its q/phi map or "
                                  "processed bins); fix the file")
    return float(q_sel), chosen


def _check_matrices(path, h5, names, sources: list) -> int:
    shape = None
    for name in names:
        ds = _dataset(path, h5, name, sources)
        if ds.ndim != 2 or ds.shape[0] != ds.shape[1]:
            raise DataFileError(path, f"{name} has shape {ds.shape}, expected a square matrix")
        try:
            dtype = ds.dtype
        except ValueError as exc:  # an HDF5 float wider than any NumPy type
            raise DataFileError(path, f"{name} has an HDF5 data type NumPy cannot hold "
                                      f"({exc}); store it as float32 or float64") from None
        if not np.issubdtype(dtype, np.floating):
            raise DataFileError(path, f"{name} has dtype {dtype}, expected floating point")
        if shape is not None and ds.shape != shape:
            raise DataFileError(path, f"{name} has shape {ds.shape}, others {shape}")
        shape = ds.shape
        n = ds.shape[0]
        if n < 2:
            raise DataFileError(path, f"{name} is {n}x{n}; a two-time matrix needs at least "
                                      "2 frames")
        if n > MAX_FRAMES:  # checked before a row (n values) is read
            raise DataFileError(path, f"{name} declares {n:,} x {n:,} values, more frames than "
                                      f"any two-time result holds (at most {MAX_FRAMES:,}); the "
                                      "file is damaged")
        probe_rows = sorted({0, n // 2, n - 2}) if n > 2 else [0]
        try:
            probe = np.concatenate([ds[r, r + 1 :] for r in probe_rows if r + 1 < n] +
                                   [ds[r + 1 :, r] for r in probe_rows if r + 1 < n])
        except OSError as exc:
            raise DataFileError(path, unreadable(ds, name, exc, "truncated file?")) from exc
        _check_values(path, name, probe)
    if shape[0] < 2:
        raise DataFileError(path, f"matrices have {shape[0]} frame(s); need at least 2")
    return int(shape[0])


MAX_ABS_C2 = 1e100  # a correlation value beyond this is damage: its square overflows sums
MAX_FRAMES = 1 << 20  # a 1M x 1M matrix holds 5e11 points: 500 times the largest fit planned


def _check_values(path, name, values) -> None:
    finite = np.isfinite(values)
    if not finite.any():
        raise DataFileError(path, f"{name} holds no finite values (all NaN/Inf)")
    if not np.any(values[finite] != 0):
        if finite.all():
            raise DataFileError(path, f"{name} is all zeros")
        n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
        raise DataFileError(path, f"{name} holds no finite non-zero values (of the "
                            f"{values.size:,} values read from some of its rows and columns: "
                            f"{n_inf:,} +/-inf, {n_nan:,} NaN, the rest 0)")


def _detect_storage(ds) -> str:
    """'upper' (zeros below the diagonal), 'lower' (zeros above), or 'full'."""
    n = ds.shape[0]
    rows = sorted({1, n // 2, n - 1})
    lower = np.concatenate([np.asarray(ds[r, :r]) for r in rows if r > 0])
    upper = np.concatenate([np.asarray(ds[r - 1, r:]) for r in rows if r > 0])
    lower_zero = np.all(np.nan_to_num(lower) == 0)
    upper_zero = np.all(np.nan_to_num(upper) == 0)
    if lower_zero and not upper_zero:
        return "upper"
    if upper_zero and not lower_zero:
        return "lower"
    return "full"


def _frame_time(h5) -> float | str | None:
    """The file's frame time, None if absent, or the problem with it (a string): one
    positive time in FRAME_TIME_RANGE_S (an array only if all its values are equal)."""
    for name in (FRAME_TIME, "/xpcs/twotime/frame_time", "/measurement/instrument/detector/"
                 "exposure_period"):
        if name in h5:
            problem = not_real_numbers(_dataset(h5.filename, h5, name), name)
            if problem:  # a problem, not an error: a config dt replaces the file's
                return problem
            return _one_frame_time(name, _read(h5.filename, h5, name).ravel())
    return None


def _one_frame_time(name, values) -> float | str:
    if values.dtype.kind == "b":  # True would read as 1 s
        return f"{name} holds booleans ({values.tolist()[:4]}), not a frame time in seconds"
    try:
        times = values.astype(float)
    except (TypeError, ValueError):
        times = np.array([np.nan])
    if times.size == 0 or not np.all(np.isfinite(times)) or np.any(times <= 0):
        return f"{name} = {values.tolist()[:4]} is not a positive frame time"
    lo, hi = times.min(), times.max()
    if hi - lo > 1e-9 * hi:
        return (f"{name} holds {times.size} different frame times ({lo:g} to {hi:g} s); "
                "a fit needs one")
    return frame_time_problem(name, lo) or float(times[0])


def _frame_range(path, start_frame, end_frame, n_file) -> tuple[int, int]:
    last = n_file if end_frame in (-1, None) else int(end_frame)
    first = int(start_frame)
    if first < 1 or last > n_file or last - first + 1 < 2:
        raise DataFileError(path, f"frame range start_frame={start_frame}, end_frame={end_frame} "
                                  f"is outside the data (frames 1..{n_file}, 1-based, need >= 2)")
    return first, last
