import dataclasses

import pytest

from recipe.config import ConfigError, RecipeConfig


def test_defaults_are_the_seed_recipe():
    c = RecipeConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.nesterov) == (250, 128, 0.1, 0.9, True)
    assert (c.weight_decay, c.label_smoothing, c.dropout, c.grad_clip, c.erasing_p) == (5e-4, 0.1, 0.2, 1.0, 0.5)
    # OneCycle: 10% warm-up, from max_lr/10 to max_lr/100, momentum not cycled.
    assert (c.pct_start, c.div_factor, c.final_div_factor, c.cycle_momentum) == (0.1, 10.0, 10.0, False)
    assert (c.width, c.val_size, c.data, c.pipeline) == (64, 0, "cifar100", "fast")


@pytest.mark.parametrize(
    "field, value",
    [("lr", -0.1), ("dropout", 1.5), ("epochs", 0), ("label_smoothing", 1.0), ("device", "gpu"),
     ("pipeline", "slow"), ("batch_size", 2.5), ("weight_decay", float("nan")), ("amp", "fp8")],
)
def test_invalid_setting_is_an_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        RecipeConfig(**{field: value})


def test_round_trips_through_json():
    c = RecipeConfig(lr=0.05, dropout=0.3, data="synthetic", nesterov=False, momentum=0.8, compile=True)
    assert RecipeConfig.from_json(c.to_json()) == c
    assert dataclasses.asdict(RecipeConfig.from_json(c.to_json())) == dataclasses.asdict(c)


def test_unknown_setting_is_an_error():
    with pytest.raises(ConfigError, match="^learning_rate: not a recipe setting"):
        RecipeConfig.from_dict({"learning_rate": 0.1})


def test_int_is_accepted_where_a_float_is_expected():
    assert RecipeConfig(lr=1).lr == 1.0 and isinstance(RecipeConfig(lr=1).lr, float)


def test_compile_is_a_mode_and_older_true_or_false_still_loads():
    assert RecipeConfig().compile == "off"
    assert RecipeConfig(compile="reduce-overhead").compile == "reduce-overhead"
    # config.json and checkpoints written when compile was a switch
    assert RecipeConfig.from_json('{"compile": true}').compile == "default"
    assert RecipeConfig.from_json('{"compile": false}').compile == "off"
    with pytest.raises(ConfigError, match="^compile: must be one of off, default, max-autotune-no-cudagraphs, "):
        RecipeConfig(compile="fastest")


def test_the_compile_flag_alone_means_the_default_mode():
    from recipe.cli import Parser, add_config_flags, given_settings

    parser = Parser()
    add_config_flags(parser, ["compile"])
    assert given_settings(parser.parse_args(["--compile"])) == {"compile": "default"}
    assert given_settings(parser.parse_args(["--compile", "max-autotune-no-cudagraphs"])) == {
        "compile": "max-autotune-no-cudagraphs"}
    assert given_settings(parser.parse_args([])) == {}
