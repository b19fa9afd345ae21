import argparse

import pytest

from recsim_stream.config import Config, ConfigError, add_config_arguments, load_config


def _parse(argv, sections=("sim", "kafka"), primary="sim"):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, sections, primary=primary)
    return parser.parse_args(argv)


def test_defaults_work_out_of_the_box():
    assert load_config(None, {}) == Config()


def test_environment_overrides_defaults():
    config = load_config(None, {"RECSIM_SIM_RATE": "0", "RECSIM_KAFKA_BOOTSTRAP": "127.0.0.1:19092"})
    assert config.sim.rate == 0.0
    assert config.kafka.bootstrap == "127.0.0.1:19092"


def test_cli_overrides_environment():
    args = _parse(["--rate", "5", "--kafka-partitions", "8"])
    config = load_config(args, {"RECSIM_SIM_RATE": "9", "RECSIM_KAFKA_PARTITIONS": "2"})
    assert config.sim.rate == 5.0
    assert config.kafka.partitions == 8


def test_primary_section_flags_are_unprefixed():
    args = _parse(["--events", "100000"])
    assert load_config(args, {}).sim.events == 100000


def test_bool_settings_parse_words():
    assert load_config(None, {"RECSIM_CONTENT_ENABLED": "off"}).content.enabled is False


def test_bad_type_names_the_setting():
    with pytest.raises(ConfigError, match="learn.dim: expected int, got 'abc'"):
        load_config(None, {"RECSIM_LEARN_DIM": "abc"})


def test_invalid_value_names_the_setting():
    with pytest.raises(ConfigError, match="kafka.partitions"):
        load_config(None, {"RECSIM_KAFKA_PARTITIONS": "0"})


def test_help_names_the_environment_variable():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ["sim"], primary="sim")
    assert "env RECSIM_SIM_RATE" in parser.format_help()


def test_the_apis_gil_switch_interval_must_be_positive():
    assert load_config(None, {"RECSIM_API_GIL_SWITCH_MS": "2"}).api.gil_switch_ms == 2.0
    with pytest.raises(ConfigError, match="api.gil_switch_ms"):
        load_config(None, {"RECSIM_API_GIL_SWITCH_MS": "0"})
