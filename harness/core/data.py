"""Calibration and evaluation data: ``.npz`` files of named arrays or folders of ``.npy``, matched to model inputs.

Layouts (the first axis of every array is the sample axis):

- ``data.npz``: named arrays, loaded into memory;
- ``folder/<input>.npy`` (+ ``labels.npy``): one array per input; with ``lazy=True`` memory-mapped, so a set
  larger than memory is read batch by batch;
- ``folder/<input>/<sample>.npy`` (+ ``labels/<sample>.npy`` or ``labels.npy``): one file per sample, sorted by
  file name; with ``lazy=True`` a batch reads only its own files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtbench.harness.core.errors import DataError
from qtbench.harness.core.onnxfacts import onnx_graph


@dataclass(frozen=True)
class Dataset:
    """Named input arrays sharing a first (sample) axis, optional integer labels, and a content hash."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str
    source: str
    #: facts a row should carry, e.g. that no labels were found (so accuracy is absent by design, not lost)
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (hash recomputed, so caches keyed on it stay exact)."""
        if n >= len(self):
            return self
        inputs = {k: v[:n] for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(inputs, labels, hash_arrays(inputs, labels), f"{self.source}[:{n}]", self.warnings)


class SampleFiles:
    """One ``.npy`` file per sample, read on slicing: an array-like (``len``, ``shape``, ``dtype``, ``[a:b]``)
    that holds only file names, so a folder larger than memory streams batch by batch."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        first = _load_npy(files[0], mmap=True)
        self.dtype, self.sample_shape = first.dtype, tuple(first.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return len(self.files)

    def head(self, n: int) -> SampleFiles:
        return SampleFiles(self.files[:n])

    def __getitem__(self, key: slice | int) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self[int(key) : int(key) + 1][0]
        if not isinstance(key, slice):
            raise TypeError("SampleFiles supports integer and slice indexing")
        out = []
        for f in self.files[key]:
            a = _load_npy(f)
            if a.dtype != self.dtype or a.shape != self.sample_shape:
                raise DataError(
                    f"{f}: {a.dtype} {a.shape} differs from the first sample's {self.dtype} {self.sample_shape}; "
                    "every per-sample file of an input must have one shape and dtype"
                )
            out.append(a)
        return np.stack(out) if out else np.empty((0, *self.sample_shape), self.dtype)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def _load_npy(f: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{f}: cannot read as .npy ({_first_line(exc)}); re-save it") from None


_HASH_CHUNK_BYTES = 64 << 20


def hash_arrays(inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal data ⇒ equal hash, across runs.

    Reads in chunks of samples, so memory-mapped and per-sample-file arrays hash without being loaded whole
    (the digest equals the one of the same data in memory)."""
    h = hashlib.sha256()
    items = sorted(inputs.items()) + ([("__labels__", labels)] if labels is not None else [])
    for name, arr in items:
        shape = tuple(int(d) for d in arr.shape)
        h.update(f"{name}|{np.dtype(arr.dtype).str}|{shape}|".encode())
        if not shape:
            h.update(np.ascontiguousarray(arr).tobytes())
            continue
        row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
        step = max(1, _HASH_CHUNK_BYTES // row)
        for start in range(0, shape[0], step):
            h.update(np.ascontiguousarray(arr[start : start + step]).tobytes())
    return h.hexdigest()


DEFAULT_LABELS = "labels"


def load_arrays(path: str | Path, role: str = "data", lazy: bool = False) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` file or a folder of ``.npy`` files, by name; errors name the file and its role.

    ``lazy``: ``.npy`` files are memory-mapped and per-sample folders stay :class:`SampleFiles` (read on slicing);
    otherwise everything is loaded into memory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        per_sample = {d.name: sorted(d.glob("*.npy")) for d in sorted(p.iterdir()) if d.is_dir()}
        per_sample = {k: v for k, v in per_sample.items() if v}
        if per_sample:
            out: dict[str, np.ndarray] = {f.stem: _load_npy(f, mmap=lazy) for f in files}
            for name, sample_files in per_sample.items():
                if name in out:
                    raise DataError(f"{role} data {p}: both {name}.npy and {name}/ exist; keep one")
                out[name] = SampleFiles(sample_files) if lazy else np.asarray(SampleFiles(sample_files))
            return out
        if lazy and files:
            return {f.stem: _load_npy(f, mmap=True) for f in files}
        if not files:
            raise DataError(f"{role} data {p} holds no .npy files; put one <input-name>.npy per model input there")
        out = {}
        for f in files:
            try:
                out[f.stem] = np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise DataError(f"{role} data {f}: cannot read as .npy ({_first_line(exc)}); re-save it") from None
        return out
    if p.is_file():
        if p.stat().st_size == 0:
            raise DataError(f"{role} data {p} is empty (0 bytes); write it with numpy.savez(path, input=...)")
        if p.suffix == ".npy":
            raise DataError(
                f"{role} data {p} is a single .npy array; use a .npz of named arrays "
                "(numpy.savez(path, input=x, labels=y)) or a folder of <input-name>.npy files"
            )
        import zipfile

        try:
            z = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{role} data {p}: cannot read as .npz ({_first_line(exc)}); "
                "save data with numpy.savez(path, input=...)"
            ) from None
        if not hasattr(z, "files"):
            raise DataError(f"{role} data {p} is a single .npy array; use a .npz with named arrays or a folder of .npy")
        try:
            with z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{role} data {p}: an array inside is unreadable ({_first_line(exc)}); re-save it"
            ) from None
    raise DataError(f"{role} data path {p} does not exist")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def load_dataset(
    path: str | Path,
    input_names: list[str],
    labels_key: str | None = None,
    limit: int | None = None,
    role: str = "evaluation",
    lazy: bool = False,
) -> Dataset:
    """Load data for a model with ``input_names``; a single-input model takes the one non-label array.

    ``labels_key`` None means "the array named ``labels`` if there is one"; a key the user named must exist.
    Non-finite values in float inputs are rejected: they turn calibration ranges and every metric into NaN.
    ``lazy`` (see :func:`load_arrays`) leaves folders on disk; the finiteness check then moves to whoever reads
    the batches (the cell checks every evaluation batch). Labels may be per-sample masks (N×H×W).
    """
    if not input_names:
        raise DataError(f"the model has no graph inputs to feed {role} data {path} to; check the ONNX file")
    arrays = load_arrays(path, role, lazy)
    warnings: list[str] = []
    if labels_key is not None and labels_key not in arrays:
        raise DataError(
            f"{role} data {path}: labels array {labels_key!r} not found; it has {', '.join(sorted(arrays))} "
            f"(fix `{role}.labels`, or remove it to evaluate without labels)"
        )
    key = labels_key or DEFAULT_LABELS
    labels = arrays.pop(key, None)
    if labels is None and role == "evaluation":
        warnings.append(f"no labels array {key!r} in {Path(path).name}: accuracy, ECE and FP→Q gap are not computed")
    if len(input_names) == 1 and input_names[0] not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{role} data {path}: model input {input_names[0]!r} not found and the file has several arrays "
                f"({', '.join(sorted(arrays))}); name the array after the input"
            )
        arrays = {input_names[0]: next(iter(arrays.values()))}
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise DataError(
            f"{role} data {path}: no array for model input(s) {', '.join(missing)}; it has {', '.join(sorted(arrays))}"
        )
    inputs = {n: arrays[n] for n in input_names}
    for name, a in inputs.items():
        if a.ndim == 0:
            raise DataError(f"{role} data {path}: array {name!r} is a scalar; the first axis must be the sample axis")
    counts = {n: len(a) for n, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise DataError(
            f"{role} data {path}: inputs have different sample counts {counts}; the first axis is the sample axis"
        )
    n = next(iter(counts.values()))
    if labels is not None:
        labels = labels if lazy else np.asarray(labels)
        if labels.ndim < 1 or labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{role} data {path}: labels {key!r} must be integers of shape ({n},) (classes) or ({n}, H, W) "
                f"(masks), got {labels.dtype} {tuple(labels.shape)}"
            )
    if n == 0:
        raise DataError(f"{role} data {path}: holds zero samples")
    if limit is not None:
        inputs = {k: v.head(limit) if isinstance(v, SampleFiles) else v[:limit] for k, v in inputs.items()}
        labels = None if labels is None else labels.head(limit) if isinstance(labels, SampleFiles) else labels[:limit]
    for name, a in inputs.items():
        if np.issubdtype(a.dtype, np.inexact) and not isinstance(a, SampleFiles | np.memmap):
            bad = ~np.isfinite(a)
            if bad.any():
                first = int(np.argmax(bad.reshape(len(a), -1).any(axis=1)))
                raise DataError(
                    f"{role} data {path}: array {name!r} holds {int(bad.sum())} non-finite value(s) (NaN/Inf), "
                    f"first in sample {first}; clean or drop those samples"
                )
    if role != "evaluation":
        labels = None
    return Dataset(inputs, labels, hash_arrays(inputs, labels), str(path), tuple(warnings))


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def check_against_model(ds: Dataset, model_path: str | Path, role: str) -> None:
    """Shapes and dtypes of ``ds`` against the ONNX graph inputs: a mismatch names the data file, not the runtime."""

    graph = onnx_graph(model_path).graph
    for inp in graph.input:
        if inp.name not in ds.inputs:
            continue
        arr = ds.inputs[inp.name]
        tt = inp.type.tensor_type
        want = _ONNX_DTYPES.get(tt.elem_type)
        if want and arr.dtype != np.dtype(want):
            raise DataError(
                f"{role} data {ds.source}: array {inp.name!r} is {arr.dtype} but the model input is {want}; "
                f"save it as {want} (x.astype(numpy.{want}))"
            )
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.HasField("shape") and not dims:
            raise DataError(
                f"model input {inp.name!r} is a scalar (0-dim), so it cannot take a batch of samples; qtbench feeds "
                f"{role} samples along the first axis: export the model with a leading batch axis (e.g. [N, ...])"
            )
        wrong_rank = len(dims) != arr.ndim
        if dims and (wrong_rank or any(w is not None and w != a for w, a in zip(dims[1:], arr.shape[1:], strict=True))):
            shown = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
            raise DataError(
                f"{role} data {ds.source}: array {inp.name!r} has shape {tuple(arr.shape)} but the model input "
                f"expects {shown} (first axis = samples)"
            )
