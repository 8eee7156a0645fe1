import numpy as np
import pytest
import torch

from mefl_app.data.partition import dirichlet_partition, group_partition, split_train_test
from mefl_app.data.shards import check_shard_matches, load_shard, make_client_shard, write_shards
from mefl_app.data.tensors import DataError
from mefl_app.settings import RunSettings, SettingsError

LABELS = np.repeat(np.arange(10), 600)  # 6,000 samples, balanced like Fashion-MNIST


def _mean_classes_per_shard(shards, labels, share=0.05):
    """Classes holding more than `share` of a shard, averaged over shards (a skew measure)."""
    counts = [np.bincount(labels[s], minlength=10) / max(len(s), 1) for s in shards]
    return float(np.mean([(c > share).sum() for c in counts]))


def test_shards_are_disjoint_and_complete():
    shards = dirichlet_partition(LABELS, 24, alpha=0.2, seed=1, min_size=20)
    joined = np.concatenate(shards)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)


def test_split_is_deterministic_for_seed_alpha_and_count():
    a = dirichlet_partition(LABELS, 24, 0.2, seed=7, min_size=20)
    b = dirichlet_partition(LABELS, 24, 0.2, seed=7, min_size=20)
    c = dirichlet_partition(LABELS, 24, 0.2, seed=8, min_size=20)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_label_skew_grows_as_alpha_shrinks():
    skews = [
        _mean_classes_per_shard(dirichlet_partition(LABELS, 24, alpha, seed=3, min_size=10), LABELS)
        for alpha in (100.0, 1.0, 0.2, 0.05)
    ]
    assert skews == sorted(skews, reverse=True)
    assert skews[0] == 10 and skews[-1] < 3


def test_every_shard_reaches_the_minimum_size():
    shards = dirichlet_partition(LABELS, 24, 0.1, seed=0, min_size=60)
    assert min(len(s) for s in shards) >= 60


def test_more_shards_than_samples_is_refused():
    with pytest.raises(SettingsError, match="num-partitions"):
        dirichlet_partition(LABELS[:30], 24, 0.2, seed=0, min_size=2)


def test_impossible_minimum_size_fails_with_advice():
    with pytest.raises(SettingsError, match="min-partition-size"):
        dirichlet_partition(LABELS, 24, 0.01, seed=0, min_size=240, max_retries=3)


def test_alpha_must_be_positive():
    with pytest.raises(SettingsError, match="dirichlet-alpha"):
        dirichlet_partition(LABELS, 4, 0.0, seed=0)


def test_statistics_match_flwr_datasets_dirichlet_partitioner():
    """Same variant as flwr-datasets' DirichletPartitioner (self_balancing=False): on the same
    labels the skew (classes per shard) and the spread of shard sizes agree closely."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    ours_skew, theirs_skew, ours_cv, theirs_cv = [], [], [], []
    for seed in range(5):
        ours = dirichlet_partition(LABELS, 24, 0.2, seed=seed, min_size=10)
        partitioner = DirichletPartitioner(
            24, "label", alpha=0.2, min_partition_size=10, self_balancing=False, seed=seed
        )
        partitioner.dataset = Dataset.from_dict({"label": LABELS, "idx": np.arange(len(LABELS))})
        theirs = [np.array(partitioner.load_partition(i)["idx"]) for i in range(24)]
        ours_skew.append(_mean_classes_per_shard(ours, LABELS))
        theirs_skew.append(_mean_classes_per_shard(theirs, LABELS))
        ours_cv.append(np.std([len(s) for s in ours]) / np.mean([len(s) for s in ours]))
        theirs_cv.append(np.std([len(s) for s in theirs]) / np.mean([len(s) for s in theirs]))
    assert np.mean(ours_skew) == pytest.approx(np.mean(theirs_skew), rel=0.15)
    assert np.mean(ours_cv) == pytest.approx(np.mean(theirs_cv), rel=0.3)


def test_train_test_split_is_seeded_and_complete():
    idx = np.arange(100, 150)
    train, test = split_train_test(idx, 0.2, seed=5)
    assert len(test) == 10 and len(train) == 40
    assert sorted(np.concatenate([train, test]).tolist()) == idx.tolist()
    again = split_train_test(idx, 0.2, seed=5)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])


def test_group_partition_gives_one_shard_per_group():
    groups = np.array([3, 1, 3, 2, 1, 1])
    assert [s.tolist() for s in group_partition(groups)] == [[1, 4, 5], [3], [0, 2]]


def test_client_shard_is_identical_for_multi_and_single_exit(task_data):
    me = make_client_shard(task_data, RunSettings(multi_exit=True, seed=1), 2, 4)
    se = make_client_shard(task_data, RunSettings(multi_exit=False, seed=9), 2, 4)
    assert torch.equal(me.train.y, se.train.y) and torch.equal(me.test.x, se.test.x)


def test_shard_file_round_trip_and_wrong_data_set_is_refused(tmp_path, task_data):
    settings = RunSettings(min_partition_size=10)
    manifest = write_shards(task_data, settings, 3, tmp_path)
    assert manifest.exists() and len(list(tmp_path.glob("client_*.npz"))) == 3
    shard = load_shard(tmp_path / "client_001.npz")
    expected = make_client_shard(task_data, settings, 1, 3)
    assert torch.equal(shard.train.x, expected.train.x) and torch.equal(shard.test.y, expected.test.y)
    assert shard.meta["label_counts_train"] == expected.meta["label_counts_train"]
    check_shard_matches(shard, settings, 10, (1, 28, 28))
    with pytest.raises(SettingsError, match="another data set.*task 'fmnist'"):
        check_shard_matches(shard, RunSettings(task="har"), 10, (1, 28, 28))
    with pytest.raises(SettingsError, match="input shape"):
        check_shard_matches(shard, settings, 10, (151, 3))


def test_not_a_shard_file_is_refused(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="x.npz is corrupt or truncated"):
        load_shard(bad)
    with pytest.raises(SettingsError, match="does not exist"):
        load_shard(tmp_path / "missing.npz")


def test_validation_view_scores_on_part_of_the_local_train_part_only(task_data):
    shard = make_client_shard(task_data, RunSettings(min_partition_size=10), 0, 3)
    view = shard.validation_view(0.25, seed=1)
    assert len(view.train) + len(view.test) == len(shard.train)
    assert len(view.test) == round(0.25 * len(shard.train))
    train_rows = {tuple(r.flatten()[:8].tolist()) for r in shard.train.x}
    test_rows = {tuple(r.flatten()[:8].tolist()) for r in shard.test.x}
    assert all(tuple(r.flatten()[:8].tolist()) in train_rows for r in view.test.x)
    assert not any(tuple(r.flatten()[:8].tolist()) in test_rows for r in view.test.x)
