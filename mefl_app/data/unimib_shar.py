"""UniMiB-SHAR (Micucci et al., 2017): accelerometer windows of 151 x 3 samples, 17 classes."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch

from .tensors import DataError, TaskData, TensorData

UNIMIB_SHAR_URL = "http://www.sal.disco.unimib.it/technologies/unimib-shar/"
HAR_WINDOW, HAR_AXES = 151, 3


@dataclass(frozen=True)
class HarWindows:
    """UniMiB-SHAR windows as released: N x 151 x 3 acceleration (m/s^2), 0-based labels,
    subject ids, class names."""

    windows: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    class_names: tuple[str, ...]


def load_unimib_shar(data_dir: str | Path, subset: str = "acc") -> HarWindows:
    """Read ``<subset>_data.mat``, ``<subset>_labels.mat`` and ``<subset>_names.mat``.

    Layout of the real release (Micucci et al., 2017): data N x 453 (151 x-samples, then 151 y,
    then 151 z), labels N x 3 (activity 1..K, subject, trial), names a 2 x K cell whose first row
    holds the class names. Any deviation fails with one message naming the file.
    """
    root = Path(data_dir).expanduser()
    data = _mat_variable(root, subset, "data")
    labels = _mat_variable(root, subset, "labels")
    names = _mat_variable(root, subset, "names")
    data_file, labels_file, names_file = (root / f"{subset}_{part}.mat" for part in ("data", "labels", "names"))

    if data.ndim != 2 or data.shape[1] != HAR_WINDOW * HAR_AXES:
        raise DataError(
            f"{data_file}: expected N x {HAR_WINDOW * HAR_AXES} windows (151 x, y, z samples), got shape {data.shape}"
        )
    if labels.ndim != 2 or labels.shape[0] != data.shape[0] or labels.shape[1] < 2:
        raise DataError(
            f"{labels_file}: expected {data.shape[0]} x 3 (activity, subject, trial) to match {data_file.name}, "
            f"got shape {labels.shape}"
        )
    if not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{data_file}: expected numeric windows, got {data.dtype}")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DataError(
            f"{data_file}: {int((~np.isfinite(data)).sum())} non-finite value(s) (NaN or Inf) in "
            f"{int((~finite).sum())} window(s), the first in row {first + 1}"
        )
    if not np.isfinite(labels[:, :2]).all():
        first = int(np.flatnonzero(~np.isfinite(labels[:, :2]).all(axis=1))[0])
        raise DataError(f"{labels_file}: non-finite activity or subject in row {first + 1}")
    class_names = tuple(_cell_text(cell) for cell in np.atleast_2d(names)[0])
    if not class_names:
        raise DataError(f"{names_file}: expected a cell of class names, found none")
    activity = labels[:, 0]
    if not np.all(np.isin(activity, np.arange(1, len(class_names) + 1))):
        bad = [
            f"{v:g}" for v in sorted(set(activity[~np.isin(activity, np.arange(1, len(class_names) + 1))].tolist()))[:5]
        ]
        raise DataError(
            f"{labels_file}: activity labels must be integers 1..{len(class_names)} ({names_file.name} names "
            f"{len(class_names)} classes), found {', '.join(bad)}"
        )
    windows = data.reshape(-1, HAR_AXES, HAR_WINDOW).transpose(0, 2, 1).astype(np.float32)
    return HarWindows(
        np.ascontiguousarray(windows), activity.astype(np.int64) - 1, labels[:, 1].astype(np.int64), class_names
    )


def _mat_variable(root: Path, subset: str, part: str) -> np.ndarray:
    path, variable = root / f"{subset}_{part}.mat", f"{subset}_{part}"
    if not path.is_file():
        raise DataError(
            f"{path} not found: data-dir must hold UniMiB-SHAR's {subset}_data.mat, {subset}_labels.mat and "
            f"{subset}_names.mat (download from {UNIMIB_SHAR_URL}, folder 'data')"
        )
    try:
        contents = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises ValueError/TypeError/MatReadError for bad files
        raise DataError(f"{path}: not a readable MATLAB file ({error})") from error
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(f"{path}: expected variable {variable!r}, found {found}")
    return contents[variable]


def _cell_text(cell) -> str:
    """Text of one MATLAB cell entry as scipy returns it (nested object arrays of strings)."""
    value = np.asarray(cell)
    while value.dtype == object and value.size:
        value = np.asarray(value.ravel()[0])
    return str(value.ravel()[0]) if value.size else ""


@functools.lru_cache(maxsize=4)
def load_har(data_dir: str | Path, subset: str, central_test_fraction: float, seed: int) -> TaskData:
    """UniMiB-SHAR (layout) as a task: a stratified ``central_test_fraction`` of the windows is
    the central test set, the rest the pool that is sharded. Each axis is standardized with the
    pool's mean and standard deviation (the central test set never informs them)."""
    raw = load_unimib_shar(data_dir, subset)
    pool, test = _stratified_holdout(raw.labels, central_test_fraction, seed)
    mean = raw.windows[pool].mean(axis=(0, 1))
    std = raw.windows[pool].std(axis=(0, 1)) + 1e-6
    x = torch.from_numpy((raw.windows - mean) / std).float()
    y, subjects = torch.from_numpy(raw.labels), torch.from_numpy(raw.subjects)
    part = lambda idx: TensorData(x[idx].contiguous(), y[idx], subjects[idx])  # noqa: E731
    normalization = {"scale": 1.0, "mean": mean.tolist(), "std": std.tolist(), "axis": -1}
    return TaskData("har", part(pool), part(test), raw.class_names, normalization)


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping every class's share: ``fraction`` of each class held out."""
    rng = np.random.default_rng(seed)
    held = [
        members[: round(fraction * len(members))]
        for members in (rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels))
    ]
    test = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), test), test
