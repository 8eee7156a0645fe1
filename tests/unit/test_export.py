"""Exported models: every file gives the PyTorch model's logits, and early exit runs no layer past
the exit it chose (forward hooks on a crafted model: an all-zero input is confident nowhere before
the last exit, any other input at exit 1)."""

import json

import numpy as np
import pytest
import torch

from mefl.export import EarlyExit, export_run, segments_of
from mefl.exported import ENGINES, ExportedModel
from mefl.predict import predict
from mefl_app.data.tensors import DataError
from mefl_app.settings import RunSettings
from mefl_app.task import build_model

# The HAR windows are 16 steps here, not 151: torch.onnx traces the LSTM step by step to infer
# shapes (about a minute for 151 steps), and the exported graph is the same but for the length.
SHAPES = {"fmnist": (1, 28, 28), "har": (16, 3)}


def _run_folder(root, task="fmnist", status="completed", **config):
    settings = RunSettings.from_run_config({"task": task, "hidden-size": 8, **config})
    torch.manual_seed(0)
    model = build_model(settings, 4, SHAPES[task])
    root.mkdir(parents=True)
    torch.save(model.state_dict(), root / "model.pt")
    data = {
        "num_classes": 4,
        "class_names": ["a", "b", "c", "d"],
        "input_shape": list(SHAPES[task]),
        "normalization": {"scale": 1 / 255, "mean": [0.5], "std": [0.25], "axis": 0},
    }
    results = {"status": status, "run_id": 7, "run_config": settings.as_run_config(), "data": data, "rounds": []}
    (root / "results.json").write_text(json.dumps(results))
    return model.eval()


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    """A completed run of each task exported once for the tests that read it: (task, its PyTorch
    model, the export folder, the metadata export_run wrote)."""
    root = tmp_path_factory.mktemp(request.param)
    model = _run_folder(root / "run", request.param)
    metadata = json.loads(export_run(root / "run", root / "export", threshold=0.8).read_text())
    return request.param, model, root / "export", metadata


def test_every_exported_file_gives_the_models_logits(exported):
    task, model, folder, metadata = exported
    assert set(metadata["max_logit_difference"]) == {
        f"{engine} {kind}" for engine in ENGINES for kind in ("level1", "level2", "level3", "early-exit")
    }
    assert max(metadata["max_logit_difference"].values()) <= metadata["tolerance"] == 1e-4
    assert metadata["threshold"] == 0.8 and metadata["class_names"] == ["a", "b", "c", "d"]
    x = torch.randn(5, *SHAPES[task], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = [logits.numpy() for logits in model(x)]
    for engine in ENGINES:  # fresh inputs, batch 5 and batch 1
        loaded = ExportedModel(folder, engine)
        for level in (1, 2, 3):
            np.testing.assert_allclose(loaded.logits(x.numpy(), level), reference[level - 1], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(loaded.logits(x[:1].numpy(), level), reference[level - 1][:1], atol=1e-4)


def _crafted(tmp_path):
    """A ResNet whose exits 1 and 2 are very confident on any input with non-zero features and
    uniform (confident nowhere) on the all-zero input, whose features stay zero at every block."""
    model = _run_folder(tmp_path / "run")
    with torch.no_grad():
        for head in model.exits[:2]:
            head[-1].weight.mul_(1000.0)
            head[-1].bias.zero_()
    torch.save(model.state_dict(), tmp_path / "run" / "model.pt")
    return model


def _blocks_run(model, early, x):
    ran = []
    hooks = [block.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, block in enumerate(model.blocks, 1)]
    with torch.no_grad():
        _, chosen = early(x)
    for hook in hooks:
        hook.remove()
    return int(chosen), ran


def test_early_exit_runs_no_layer_past_the_exit_it_chose(tmp_path):
    model = _crafted(tmp_path)
    confident, unsure = torch.randn(1, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    early = EarlyExit(segments_of(model), threshold=0.9)
    assert _blocks_run(model, early, confident) == (1, [1])  # blocks 2-5 never ran
    assert _blocks_run(model, early, unsure) == (3, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="one input at a time"):
        early(torch.zeros(2, 1, 28, 28))

    export_run(tmp_path / "run", tmp_path / "export", threshold=0.9)
    for engine in ENGINES:
        exported = ExportedModel(tmp_path / "export", engine)
        if engine == "onnx":  # count the segments the host program ran
            ran = []
            exported._segments = [_Counted(s, k, ran) for k, s in enumerate(exported._segments, 1)]
        assert exported.early_exit(confident.numpy())[0] == 1
        assert exported.early_exit(unsure.numpy())[0] == 3
        if engine == "onnx":
            assert ran == [1, 1, 2, 3]
    rows = predict(ExportedModel(tmp_path / "export"), np.concatenate([confident.numpy(), unsure.numpy()]), None, None)
    assert [r["exit"] for r in rows] == [1, 3] and rows[0]["confidence"] >= 0.9


class _Counted:
    def __init__(self, session, number, ran):
        self.session, self.number, self.ran = session, number, ran

    def run(self, outputs, feeds):
        self.ran.append(self.number)
        return self.session.run(outputs, feeds)


def test_export_refuses_a_run_that_did_not_complete_and_names_a_checkpoint(tmp_path):
    _run_folder(tmp_path / "run", status="interrupted")
    with pytest.raises(DataError, match="did not complete .* name one of its checkpoints"):
        export_run(tmp_path / "run", tmp_path / "export")
    with pytest.raises(DataError, match="holds no exported model"):
        ExportedModel(tmp_path / "nothing")


def test_raw_inputs_are_normalised_as_the_metadata_says(exported):
    task, _, folder, _ = exported
    raw = np.full((2, *SHAPES[task]), 255.0)
    np.testing.assert_allclose(ExportedModel(folder, "torchscript").normalize(raw), (1.0 - 0.5) / 0.25)
