import dataclasses
import tomllib

import pytest
from helpers import REPO

from mefl_app.settings import RunSettings, SettingsError


def test_defaults_equal_the_pyproject_run_config():
    """pyproject.toml is what `flwr run` uses; the dataclass defaults must not drift from it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    fields = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(RunSettings)}
    assert config == fields


def test_study_defaults():
    s = RunSettings.from_app_dir(REPO)
    assert (s.num_server_rounds, s.local_epochs, s.dirichlet_alpha, s.target) == (50, 5, 0.2, 0.75)
    assert s.exit_positions == (1, 3, 5)
    har = RunSettings.from_app_dir(REPO, "task='har'")
    assert har.target == 0.5 and har.exit_positions == (1, 2, 3)
    assert RunSettings(target_accuracy=0.6).target == 0.6


def test_single_exit_keeps_only_the_last_exit():
    assert RunSettings(multi_exit=False).exit_positions == (5,)


def test_exit_loss_weights_per_model():
    s = RunSettings(exit_loss_weights="0.5,0.25,1")
    assert s.loss_weights() == (0.5, 0.25, 1.0)
    assert s.loss_weights(2) == (0.5, 0.25)  # a level-2 client trains exits 1-2
    assert RunSettings().loss_weights() is None  # default: all 1
    assert RunSettings(exit_loss_weights="0.5,0.25,1", multi_exit=False).loss_weights() is None
    assert RunSettings(task="har", exit_after="1,3", exit_loss_weights="0.5,1").loss_weights() == (0.5, 1.0)
    # Exit 1 may weigh 0 when no client trains on it alone: level-2 clients still have exit 2,
    # and with exclusive exit training the level-1 clients do not train at all.
    RunSettings(exit_loss_weights="0,1,1", exit_profile="2:2,3:2").validate()
    RunSettings(exit_loss_weights="0,1,1", exit_profile="1:2,3:2", exit_training="exclusive").validate()


def test_which_exit_levels_train():
    assert [RunSettings().trains_at(level) for level in (1, 2, 3)] == [True, True, True]
    exclusive = RunSettings(exit_training="exclusive")
    assert [exclusive.trains_at(level) for level in (1, 2, 3)] == [False, False, True]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("task='cifar'", "task must be one of fmnist, har"),
        ("dp='laplace'", "dp must be one of none, fixed, adaptive"),
        ("proximal-mu='big'", "proximal-mu must be a number"),
        ("dirichlet-alpha=0.0", "dirichlet-alpha must lie in"),
        ("dirichlet-alpha=-1.0", "dirichlet-alpha"),
        ("test-fraction=1.0", "test-fraction must lie in"),
        ("test-fraction=0.0", "test-fraction"),
        ("local-epochs='five'", "local-epochs must be an integer"),
        ("exit-after='3,1'", "exit-after"),
        ("exit-loss-weights='1,1'", "exit-loss-weights must be 3"),
        ("exit-loss-weights='1,-1,1'", "exit-loss-weights"),
        ("exit-loss-weights='1,1,0'", "the deepest > 0"),
        ("exit-loss-weights='a,b,c'", "exit-loss-weights"),
        ("exit-loss-weights='0,1,1' exit-profile='1:2,3:2'", "level-1 clients of exit-profile a zero loss"),
        ("norm='layer'", "norm must be one of"),
        ("distill-weight=2.0", "distill-weight"),
        ("unknown-key=1", "unknown-key"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_setting(overrides, message):
    with pytest.raises(SettingsError, match=message) as error:
        RunSettings.from_app_dir(REPO, overrides)
    assert "\n" not in str(error.value)


def test_values_are_cast_from_flower_types():
    s = RunSettings.from_run_config({"num-server-rounds": 3.0, "learning-rate": 1, "multi-exit": "false"})
    assert s.num_server_rounds == 3 and isinstance(s.learning_rate, float) and s.multi_exit is False
