"""The typed run config: defaults, TOML file, --set overrides, validation, TOML round trip, user sampling."""

import tomllib

import pytest

from fl_sim.core.config import RunConfig, from_dict, load_config, to_dict, to_toml
from fl_sim.core.errors import ConfigError


def test_defaults_load():
    # Execute
    cfg = load_config()

    # Assert: the defaults, with attack.prior=auto settled to the embedded prior at data.image_size
    expected = RunConfig()
    expected.attack.prior = "faces32"
    assert cfg == expected
    assert (cfg.users, cfg.rounds, cfg.protocol, cfg.data.dataset) == (8, 6, "fedavg", "synthfaces")


def test_set_overrides_int_float_and_nested_key():
    # Execute
    cfg = load_config(overrides=["rounds=5", "lr=0.125", "data.image_size=24", "protocol=fedsgd"])

    # Assert
    assert cfg.rounds == 5 and type(cfg.rounds) is int
    assert cfg.lr == 0.125 and type(cfg.lr) is float
    assert cfg.data.image_size == 24
    assert cfg.protocol == "fedsgd"


def test_toml_file_loads_and_set_wins_over_file(tmp_path):
    # Prepare
    path = tmp_path / "run.toml"
    path.write_text('rounds = 7\nlr = 1\n\n[data]\nimage_size = 48\ndataset = "folder:/x"\n')

    # Execute
    cfg = load_config(path, ["rounds=2"])

    # Assert
    assert cfg.rounds == 2
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.data.image_size == 48
    assert cfg.data.dataset == "folder:/x"


@pytest.mark.parametrize("pair, key", [("nope=1", "nope"), ("data.nope=1", "data.nope")])
def test_unknown_key_is_named(pair, key):
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[pair])

    # Assert
    assert f"'{key}'" in str(err.value)


def test_unknown_key_in_toml_file_is_named(tmp_path):
    # Prepare
    path = tmp_path / "run.toml"
    path.write_text("[model]\ndepth = 3\n")

    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(path)

    # Assert
    assert "'model.depth'" in str(err.value)


def test_wrong_type_names_key_and_value():
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["rounds=abc"])

    # Assert
    assert "'rounds'" in str(err.value) and "abc" in str(err.value)


def test_wrong_type_in_toml_file(tmp_path):
    # Prepare
    path = tmp_path / "run.toml"
    path.write_text("rounds = true\n")

    # Execute / Assert
    with pytest.raises(ConfigError, match="'rounds'"):
        load_config(path)


def test_negative_rounds_rejected():
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["rounds=-1"])

    # Assert
    assert "'rounds'" in str(err.value) and "-1" in str(err.value)


def test_clients_per_round_above_users_rejected():
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["users=4", "clients_per_round=5"])

    # Assert
    assert "'clients_per_round'" in str(err.value)


def test_missing_config_file_names_it(tmp_path):
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.toml")

    # Assert
    assert str(tmp_path / "absent.toml") in str(err.value)


def test_to_toml_round_trips():
    # Prepare
    cfg = load_config(overrides=["rounds=4", "lr=1e-05", "clients_per_round=0.5", "data.image_size=24",
                                 'data.dataset=folder:C:\\faces "mine"', "model.name=mlp", "simulation.client_gpus=0.25"])

    # Execute
    back = from_dict(tomllib.loads(to_toml(cfg)))

    # Assert
    assert to_dict(back) == to_dict(cfg)
    assert back.data.dataset == 'folder:C:\\faces "mine"'


def test_round_users_deterministic_in_seed_and_round():
    # Prepare
    users = [f"u{i:02d}" for i in range(20)]
    cfg = load_config(overrides=["users=20", "clients_per_round=0.25", "seed=3"])

    # Execute
    first = [cfg.round_users(users, r) for r in range(1, 6)]
    again = [load_config(overrides=["users=20", "clients_per_round=0.25", "seed=3"]).round_users(list(reversed(users)), r)
             for r in range(1, 6)]
    other_seed = [load_config(overrides=["users=20", "clients_per_round=0.25", "seed=4"]).round_users(users, r)
                  for r in range(1, 6)]

    # Assert
    assert first == again
    assert all(len(r) == 5 and set(r) <= set(users) for r in first)
    assert len({tuple(r) for r in first}) > 1  # rounds differ
    assert other_seed != first


def test_round_users_all_when_fraction_is_one():
    # Prepare
    users = ["c", "a", "b", "d"]
    cfg = load_config(overrides=["users=4", "clients_per_round=1.0"])

    # Execute
    picked = [cfg.round_users(users, r) for r in (1, 2, 3)]

    # Assert
    assert picked == [["a", "b", "c", "d"]] * 3


@pytest.mark.parametrize("pair, key", [("lr=nan", "lr"), ("clients_per_round=inf", "clients_per_round"),
                                       ("simulation.client_cpus=inf", "simulation.client_cpus")])
def test_non_finite_numbers_rejected(pair, key):
    # Execute
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[pair])

    # Assert
    assert f"'{key}'" in str(err.value)


def test_utility_users_is_one_sample_fixed_by_the_seed() -> None:
    users = [f"u{i:04d}" for i in range(40)]
    cfg = load_config(overrides=["users=40", "utility_users=7"])
    sample = cfg.utility_sample(users)
    assert len(sample) == 7 and set(sample) <= set(users) and sample == sorted(sample)
    assert cfg.utility_sample(list(reversed(users))) == sample  # the users' order does not matter
    assert load_config(overrides=["users=40", "utility_users=7", "seed=1"]).utility_sample(users) != sample
    assert load_config(overrides=["users=40"]).utility_sample(users) == users  # 0: every user
    assert load_config(overrides=["users=40", "utility_users=99"]).utility_sample(users) == users
    with pytest.raises(ConfigError, match="utility_users"):
        load_config(overrides=["utility_users=5", "utility_eval=clients"])
