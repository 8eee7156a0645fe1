import numpy as np
import pytest
import torch
from helpers import layers_run, write_unimib_shar

from mefl_app.data.shards import make_client_shard
from mefl_app.data.tensors import DataError
from mefl_app.data.unimib_shar import load_har, load_unimib_shar
from mefl_app.model.lstm import MultiExitLSTM
from mefl_app.settings import RunSettings, SettingsError
from mefl_app.task import build_model


def _layers_run(model, x, **kwargs):
    return layers_run(model.layers, model, x, **kwargs)


def test_lstm_returns_one_logit_tensor_per_layer():
    model = MultiExitLSTM(17).eval()
    logits = model(torch.randn(4, 151, 3))
    assert [z.shape for z in logits] == [torch.Size([4, 17])] * 3
    assert [type(m).__name__ for m in model.exits[0]] == ["Dropout", "Linear"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_lstm_stopping_at_exit_k_runs_no_later_layer(k):
    model = MultiExitLSTM(5, hidden_size=8)
    assert _layers_run(model, torch.randn(2, 151, 3), up_to_exit=k) == list(range(1, k + 1))


def test_lstm_exit_reads_the_last_time_step():
    model = MultiExitLSTM(5, hidden_size=8).eval()
    x = torch.randn(2, 151, 3)
    sequence, _ = model.layers[0](x)
    torch.testing.assert_close(model(x, up_to_exit=1)[0], model.exits[0](sequence[:, -1]))


def test_lstm_single_exit_baseline_shares_the_initial_backbone():
    torch.manual_seed(0)
    multi = MultiExitLSTM(6, exit_after=(1, 2, 3))
    torch.manual_seed(0)
    single = MultiExitLSTM(6, exit_after=(3,))
    assert single.num_exits == 1 and len(single.layers) == 3
    for key, value in single.state_dict().items():
        if key.startswith("layers."):
            torch.testing.assert_close(value, multi.state_dict()[key])
    torch.testing.assert_close(single.exits[0][1].weight, multi.exits[2][1].weight)


def test_hidden_size_is_a_setting():
    model = build_model(RunSettings(task="har", hidden_size=16), 12, (151, 3))
    assert model.layers[0].hidden_size == 16 and model.num_exits == 3


def test_loader_reads_the_real_layout(tmp_path):
    write_unimib_shar(tmp_path, n=50, num_classes=4)
    har = load_unimib_shar(tmp_path)
    assert har.windows.shape == (50, 151, 3) and har.windows.dtype == np.float32
    assert har.labels.min() >= 0 and har.labels.max() <= 3
    assert har.class_names == ("ACTIVITY_1", "ACTIVITY_2", "ACTIVITY_3", "ACTIVITY_4")
    import scipy.io

    raw = scipy.io.loadmat(tmp_path / "acc_data.mat")["acc_data"]
    np.testing.assert_allclose(har.windows[7, :, 1], raw[7, 151:302], rtol=1e-6)  # y axis = columns 151..301


def test_subsets_adl_and_fall_use_their_own_files(tmp_path):
    write_unimib_shar(tmp_path, subset="adl", n=30, num_classes=9)
    assert len(load_unimib_shar(tmp_path, "adl").class_names) == 9
    with pytest.raises(DataError, match="fall_data.mat not found"):
        load_unimib_shar(tmp_path, "fall")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data_var": "data"}, r"acc_data.mat: expected variable 'acc_data', found \['data'\]"),
        ({"data": np.zeros((10, 450))}, r"acc_data.mat: expected N x 453"),
        ({"labels": np.ones((9, 3))}, r"acc_labels.mat: expected 10 x 3"),
        (
            {"labels": np.column_stack([np.full(10, 5.0), np.ones(10), np.ones(10)])},
            r"acc_labels.mat: activity labels must be integers 1..4.*found 5",
        ),
        (
            {"labels": np.column_stack([np.zeros(10), np.ones(10), np.ones(10)])},
            r"activity labels must be integers 1..4.*found 0",
        ),
    ],
)
def test_bad_files_fail_with_one_message_naming_the_file(tmp_path, override, message):
    write_unimib_shar(tmp_path, n=10, num_classes=4, **override)
    with pytest.raises(DataError, match=message) as error:
        load_unimib_shar(tmp_path)
    assert "\n" not in str(error.value)


def test_missing_files_say_where_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="acc_data.mat not found.*unimib-shar"):
        load_unimib_shar(tmp_path)


def test_har_task_standardizes_with_pool_statistics_and_holds_out_a_central_test_set(tmp_path):
    write_unimib_shar(tmp_path, n=200, num_classes=4)
    data = load_har(tmp_path, "acc", 0.25, 0)
    assert len(data.train) + len(data.test) == 200 and len(data.test) == pytest.approx(50, abs=3)
    torch.testing.assert_close(data.train.x.mean(dim=(0, 1)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(data.train.x.std(dim=(0, 1)), torch.ones(3), atol=1e-2, rtol=0)
    assert data.train.groups is not None and data.input_shape == (151, 3)


def test_subject_partition_gives_one_client_per_subject(tmp_path):
    write_unimib_shar(tmp_path, n=200, subjects=6)
    data = load_har(tmp_path, "acc", 0.2, 0)
    settings = RunSettings(task="har", partition_by="subject")
    shards = [make_client_shard(data, settings, pid, 6) for pid in range(6)]
    for shard in shards:
        subjects = torch.cat([shard.train.groups, shard.test.groups]).unique()
        assert len(subjects) == 1
    assert sum(len(s.train) + len(s.test) for s in shards) == len(data.train)
    with pytest.raises(SettingsError, match="one per subject"):
        make_client_shard(data, settings, 0, 24)
