"""Calibration and evaluation data: ``.npz`` files of named arrays or folders of ``.npy``, matched to model inputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Named input arrays sharing a first (sample) axis, optional integer labels, and a content hash."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    sha256: str
    source: str

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
        return Dataset(inputs, labels, hash_arrays(inputs, labels), f"{self.source}[:{n}]")


def hash_arrays(inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal data ⇒ equal hash, across runs."""
    h = hashlib.sha256()
    items = sorted(inputs.items()) + ([("__labels__", labels)] if labels is not None else [])
    for name, arr in items:
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` file or a folder of ``.npy`` files, by name."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise DataError(f"{p} holds no .npy files; put one <input-name>.npy per model input there")
        return {f.stem: np.load(f, allow_pickle=False) for f in files}
    if p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise DataError(f"{p} is a single .npy array; use a .npz with named arrays or a folder of .npy")
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise DataError(f"{p}: cannot read as .npz ({exc}); save data with numpy.savez(path, input=...)") from None
    raise DataError(f"data path {p} does not exist")


def load_dataset(
    path: str | Path,
    input_names: list[str],
    labels_key: str | None = "labels",
    limit: int | None = None,
) -> Dataset:
    """Load data for a model with ``input_names``; a single-input model takes the one non-label array."""
    arrays = load_arrays(path)
    labels = arrays.pop(labels_key, None) if labels_key else None
    if len(input_names) == 1 and input_names[0] not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{path}: model input {input_names[0]!r} not found and the file has several arrays "
                f"({', '.join(sorted(arrays))}); name the array after the input"
            )
        arrays = {input_names[0]: next(iter(arrays.values()))}
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise DataError(f"{path}: no array for model input(s) {', '.join(missing)}; it has {', '.join(sorted(arrays))}")
    inputs = {n: arrays[n] for n in input_names}
    counts = {n: len(a) for n, a in inputs.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{path}: inputs have different sample counts {counts}; the first axis is the sample axis")
    n = next(iter(counts.values()))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: labels {labels_key!r} must be integers of shape ({n},), got {labels.dtype} {labels.shape}"
            )
    if n == 0:
        raise DataError(f"{path}: holds zero samples")
    if limit is not None:
        inputs = {k: v[:limit] for k, v in inputs.items()}
        labels = None if labels is None else labels[:limit]
    return Dataset(inputs, labels, hash_arrays(inputs, labels), str(path))
