"""Test helpers: small synthetic data in the real formats, and views of a run's output."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from mefl_app import metrics
from mefl_app.data.tensors import TaskData, TensorData

REPO = Path(__file__).resolve().parents[1]


def synthetic_task(n=600, num_classes=10, seed=0, name="fmnist") -> TaskData:
    """Small image data set: the label sets the orientation of a stripe texture, a local
    pattern that every exit can learn (a brightness code would be erased by GroupNorm)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")

    def part(size):
        y = torch.randint(0, num_classes, (size,), generator=g)
        angle = (y.float() * torch.pi / num_classes).view(-1, 1, 1)
        phase = torch.rand(size, 1, 1, generator=g) * 2 * torch.pi
        stripes = torch.sin(2 * torch.pi * (rows * torch.cos(angle) + cols * torch.sin(angle)) / 5 + phase)
        x = stripes.unsqueeze(1) + 0.3 * torch.randn(size, 1, 28, 28, generator=g)
        return TensorData(x, y)

    return TaskData(name, part(n), part(n // 5), tuple(f"c{i}" for i in range(num_classes)))


def write_idx_fashion_mnist(root: Path, n_train=480, n_test=120, seed=0) -> Path:
    """Fashion-MNIST's original IDX file format, uncompressed, where torchvision looks."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # The label sets the brightness: learnable by every exit.
        images = (rng.integers(0, 40, (n, 28, 28)) + 20 * labels[:, None, None]).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def layers_run(layers, model, x, **kwargs) -> list[int]:
    """Which of ``layers`` (numbered from 1) a forward pass of ``model`` ran, in order."""
    ran = []
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, layer in enumerate(layers, 1)]
    try:
        model(x, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return ran


def write_unimib_shar(root: Path, subset="acc", n=240, num_classes=4, subjects=6, seed=0, **override) -> Path:
    """Synthetic windows in UniMiB-SHAR's real file layout (scipy.io .mat files).

    ``override`` replaces a file's content: e.g. ``labels=array`` or ``names_var="x"``.
    """
    import scipy.io

    rng = np.random.default_rng(seed)
    labels = rng.integers(1, num_classes + 1, n)
    t = np.arange(151) / 50.0
    # Class-specific oscillation frequency on each axis: learnable by an LSTM.
    data = np.concatenate([np.sin(2 * np.pi * (labels[:, None] * (a + 1)) * t) for a in range(3)], axis=1)
    data = 9.81 * data + rng.normal(0, 0.5, data.shape)
    table = np.stack([labels, rng.integers(1, subjects + 1, n), rng.integers(1, 3, n)], axis=1).astype(float)
    table[:subjects, 1] = np.arange(1, subjects + 1)  # every subject present
    names = np.empty((2, num_classes), dtype=object)
    for k in range(num_classes):
        names[0, k] = names[1, k] = np.array([f"ACTIVITY_{k + 1}"])
    root.mkdir(parents=True, exist_ok=True)
    contents = {
        "data": override.get("data", data),
        "labels": override.get("labels", table),
        "names": override.get("names", names),
    }
    for part, value in contents.items():
        variable = override.get(f"{part}_var", f"{subset}_{part}")
        scipy.io.savemat(root / f"{subset}_{part}.mat", {variable: value})
    return root


def only_results(output_dir: Path) -> dict:
    files = sorted(output_dir.glob("*/results.json"))
    assert len(files) == 1, f"expected one run folder in {output_dir}, found {files}"
    return json.loads(files[0].read_text())


SHORT_RUN = {"num-server-rounds": 2, "local-epochs": 1, "min-partition-size": 10}  # the end-to-end tests' runs


def completed_run(superlink, config: dict, clients: int) -> dict:
    """Run the app with ``config`` on ``clients`` simulated clients of ``superlink``; the results
    of the run, which must have completed, from its ``output-dir``."""
    proc = superlink.run(REPO, config, num_supernodes=clients)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = only_results(Path(config["output-dir"]))
    assert results["status"] == "completed", (results.get("error"), proc.stdout[-3000:])
    return results


def train_reply(arrays: dict, partition: int, level: int = 1, examples: int = 10):
    """A client's train reply as the ClientApp sends it: ``arrays`` (name -> values) and the metrics
    of a client at exit ``level`` with ``examples`` training examples, from node 100 + ``partition``."""
    from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

    scores = metrics.ExitScores([1] * level, [0.5] * level, [4] * level)
    record = metrics.scores_record(partition, examples, scores, **{metrics.TRAIN_LOSS: 1.0})
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}),
            "metrics": record,
        }
    )
    message = Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_src_node_id"] = 100 + partition
    return message


class FourNodes:
    """A grid of four connected nodes (100-103): the federation a strategy samples from."""

    def get_node_ids(self):
        return [100, 101, 102, 103]


def relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over the floating-point arrays of two state dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    squared = sum(((a[k] - b[k]).double() ** 2).sum() for k in keys)
    return float((squared / sum((b[k].double() ** 2).sum() for k in keys)).sqrt())
