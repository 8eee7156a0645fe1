import inspect

import pytest
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from mefl_app.server.feddyn import FedDyn
from mefl_app.server.strategies import (
    FLOWER_STRATEGIES,
    MEFL_STRATEGIES,
    STRATEGY_PARAMETERS,
    build_strategy,
    flower_default,
)
from mefl_app.settings import RunSettings, SettingsError


class NotAStrategy:
    pass


class TinyStrategy(FedAvg):
    """A user strategy with an argument of its own."""

    def __init__(self, greeting: str = "hi", **kwargs):
        super().__init__(**kwargs)
        self.greeting = greeting


@pytest.mark.parametrize("name", sorted(FLOWER_STRATEGIES))
def test_every_builtin_name_builds_flowers_own_class(name):
    strategy = build_strategy(RunSettings(strategy=name))
    assert type(strategy) is FLOWER_STRATEGIES[name]
    assert type(strategy).__module__.startswith("flwr.serverapp.strategy")


def test_feddyn_is_mefls_own_and_takes_its_alpha():
    strategy = build_strategy(RunSettings(strategy="feddyn", feddyn_alpha=0.3))
    assert type(strategy) is FedDyn and strategy.alpha == 0.3 and strategy.fraction_train == 1.0


def test_run_config_defaults_are_flowers_defaults():
    settings = RunSettings()
    for field, keyword in STRATEGY_PARAMETERS.items():
        defaults = {
            flower_default(name, keyword)
            for name, cls in FLOWER_STRATEGIES.items()
            if keyword in inspect.signature(cls).parameters
        }
        if not defaults:  # a parameter of mefl's own strategies only
            assert any(keyword in inspect.signature(cls).parameters for cls in MEFL_STRATEGIES.values()), field
        elif len(defaults) > 1:  # differs between strategies: 0 selects each strategy's own default
            assert getattr(settings, field) == 0, field
        else:
            assert getattr(settings, field) == defaults.pop(), field


def test_per_strategy_defaults_are_left_to_flower():
    adam, yogi = build_strategy(RunSettings(strategy="fedadam")), build_strategy(RunSettings(strategy="fedyogi"))
    assert (adam.eta, adam.eta_l) == (flower_default("fedadam", "eta"), flower_default("fedadam", "eta_l"))
    assert (yogi.eta, yogi.eta_l) == (flower_default("fedyogi", "eta"), flower_default("fedyogi", "eta_l"))
    assert build_strategy(RunSettings(strategy="fedadam", eta=0.05)).eta == 0.05


def test_parameters_reach_the_strategy():
    assert build_strategy(RunSettings(strategy="fedprox", proximal_mu=0.1)).proximal_mu == 0.1
    m = build_strategy(RunSettings(strategy="fedavgm", server_momentum=0.9, server_learning_rate=0.5))
    assert (m.server_momentum, m.server_learning_rate) == (0.9, 0.5)
    assert build_strategy(RunSettings(strategy="fedtrimmedavg", trim_beta=0.1)).beta == 0.1
    assert build_strategy(RunSettings(strategy="multikrum", num_nodes_to_select=3)).num_nodes_to_select == 3
    q = build_strategy(RunSettings(strategy="qfedavg", qfedavg_q=0.5, learning_rate=0.05))
    assert (q.q, q.client_learning_rate, q.train_loss_key) == (0.5, 0.05, "train-loss")  # L = 1 / the clients' lr


def test_user_strategy_by_import_path_with_kwargs():
    strategy = build_strategy(
        RunSettings(strategy="test_strategies:TinyStrategy", strategy_kwargs='{"greeting": "hello"}')
    )
    assert isinstance(strategy, TinyStrategy) and strategy.greeting == "hello"
    assert strategy.fraction_train == 1.0  # common settings still reach it


@pytest.mark.parametrize(
    "settings, message",
    [
        (RunSettings(strategy="fedsgd"), "strategy must be one of fedavg"),
        (RunSettings(strategy="no_such_module:X"), "does not resolve"),
        (RunSettings(strategy="test_strategies:Missing"), "does not resolve"),
        (RunSettings(strategy="test_strategies:NotAStrategy"), "is not a subclass"),
        (
            RunSettings(strategy="test_strategies:TinyStrategy", strategy_kwargs="{nope"),
            "strategy-kwargs must be a JSON object",
        ),
        (
            RunSettings(strategy="test_strategies:TinyStrategy", strategy_kwargs='{"colour": 1}'),
            "rejected its arguments",
        ),
        (RunSettings(dp="fixed"), "dp-num-sampled-clients"),
        (
            RunSettings(dp="adaptive", dp_num_sampled_clients=3, dp_noise_multiplier=0.5),
            "dp settings rejected by Flower",
        ),
    ],
)
def test_bad_strategy_settings_fail_with_one_line(settings, message):
    with pytest.raises(SettingsError, match=message) as error:
        build_strategy(settings)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "mode, wrapper",
    [
        ("fixed", DifferentialPrivacyServerSideFixedClipping),
        ("adaptive", DifferentialPrivacyServerSideAdaptiveClipping),
    ],
)
def test_differential_privacy_wraps_any_strategy(mode, wrapper):
    strategy = build_strategy(
        RunSettings(strategy="fedprox", dp=mode, dp_num_sampled_clients=24, dp_noise_multiplier=0.5)
    )
    assert isinstance(strategy, wrapper) and isinstance(strategy, Strategy)
