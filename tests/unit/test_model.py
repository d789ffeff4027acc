"""The LeNet-5 builder and the variant/config validation: real Keras models, no training."""

from __future__ import annotations

import keras
import pytest
import yaml
from keras import layers

from conftest import tiny_params
from pipeline.core.errors import UserError
from pipeline.core.params import Params


def variant_spec(raw: dict, name: str):
    return Params.from_dict(raw).variant(name)


def train_settings(raw: dict, overrides: dict | None = None):
    return Params.from_dict(raw).with_train(overrides).train
from pipeline.train.model import bn_layers, bn_site, build_lenet, parameter_counts
from pipeline.core.paths import PARAMS

TRUNK = ["conv1", "pool1", "conv2", "pool2", "conv3", "flatten", "fc1", "output"]


def _sequence(input_mods: list[str], hidden_mods: list[str]) -> list[str]:
    """The expected layer names: image, input_<mods>, then each block core -> <mods> -> tanh."""
    names = ["image"] + [f"input_{m}" for m in input_mods]
    for core in TRUNK:
        names.append(core)
        if core in ("conv1", "conv2", "conv3", "fc1"):
            names += [f"{core}_{m}" for m in hidden_mods] + [f"{core}_tanh"]
    return names


# Parameter counts by hand (28x28x1 input; spatial 28 -same conv1-> 28 -pool 2/1-> 27
# -conv2 valid-> 23 -pool 2/2-> 11 -conv3 valid-> 7, so flatten = 7*7*120 = 5880):
#   conv1 5*5*1*6   =    150 (+6 bias when conv_bias)
#   conv2 5*5*6*16  =  2,400 (+16 bias when conv_bias)
#   conv3 5*5*16*120 = 48,000 + 120 bias = 48,120
#   fc1   5880*84   = 493,920 + 84 bias = 494,004
#   output 84*10    =    840 + 10 bias =     850
#   no bias on conv1/2: 150 + 2,400 + 48,120 + 494,004 + 850 = 545,524  (dropout: no weights)
#   plain (bias on):    545,524 + 6 + 16                     = 545,546
#   BN = 4 numbers per channel (gamma, beta trainable; moving mean/var not):
#     hidden sites 6 + 16 + 120 + 84 = 226 channels -> 904 (452 non-trainable)
#     input site 1 channel -> 4 (2 non-trainable)
#   bn_hidden: 545,524 + 904 = 546,428 (452 non-trainable)
#   bn_all, bn_dropout: 546,428 + 4 = 546,432 (454 non-trainable)
EXPECTED = {
    "plain": dict(seq=_sequence([], []), conv_bias=True, total=545_546, non_trainable=0,
                  dropout={}, bn_sites=[]),
    "bn_hidden": dict(seq=_sequence([], ["bn"]), conv_bias=False, total=546_428, non_trainable=452,
                      dropout={}, bn_sites=["conv1", "conv2", "conv3", "fc1"]),
    "bn_all": dict(seq=_sequence(["bn"], ["bn"]), conv_bias=False, total=546_432, non_trainable=454,
                   dropout={}, bn_sites=["input", "conv1", "conv2", "conv3", "fc1"]),
    "dropout": dict(seq=_sequence(["dropout"], ["dropout"]), conv_bias=False, total=545_524, non_trainable=0,
                    dropout={"input_dropout": 0.2, "conv1_dropout": 0.5, "conv2_dropout": 0.5,
                             "conv3_dropout": 0.5, "fc1_dropout": 0.5},
                    bn_sites=[]),
    "bn_dropout": dict(seq=_sequence(["dropout", "bn"], ["dropout", "bn"]), conv_bias=False, total=546_432,
                       non_trainable=454,
                       dropout={"input_dropout": 0.2, "conv1_dropout": 0.5, "conv2_dropout": 0.5,
                                "conv3_dropout": 0.5, "fc1_dropout": 0.5},
                       bn_sites=["input", "conv1", "conv2", "conv3", "fc1"]),
}


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_params_yaml_holds_exactly_the_five_variants(params):
    assert sorted(params["variants"]) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_variant_layers_shapes_biases_and_counts(params, name):
    exp = EXPECTED[name]
    model = build_lenet(variant_spec(params, name))

    assert [layer.name for layer in model.layers] == exp["seq"]
    assert model.name == f"lenet5_{name}"
    assert model.output_shape == (None, 10)
    assert model.input_shape == (None, 28, 28, 1)

    by_name = {layer.name: layer for layer in model.layers}
    assert by_name["conv1"].use_bias is exp["conv_bias"]
    assert by_name["conv2"].use_bias is exp["conv_bias"]
    assert by_name["conv3"].use_bias is True
    assert by_name["fc1"].use_bias is True
    assert by_name["conv1"].padding == "same" and by_name["conv2"].padding == "valid"
    assert by_name["pool1"].strides == (1, 1) and by_name["pool2"].strides == (2, 2)
    assert by_name["output"].activation is keras.activations.softmax
    for core in ("conv1", "conv2", "conv3", "fc1"):
        assert by_name[f"{core}_tanh"].activation is keras.activations.tanh

    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, layers.Dropout)}
    assert rates == pytest.approx(exp["dropout"]) and set(rates) == set(exp["dropout"])
    assert [bn_site(layer.name) for layer in bn_layers(model)] == exp["bn_sites"]

    counts = parameter_counts(model)
    assert counts["total"] == exp["total"] == model.count_params()
    assert counts["non_trainable"] == exp["non_trainable"]
    assert counts["trainable"] == exp["total"] - exp["non_trainable"]


def test_builder_is_pure_and_uncompiled(params):
    model = build_lenet(variant_spec(params, "bn_all"))
    assert getattr(model, "optimizer", None) is None and not model.compiled
    other = build_lenet(variant_spec(params, "bn_all"))
    assert other is not model and [w.shape for w in other.weights] == [w.shape for w in model.weights]


# --- config validation -------------------------------------------------------------------


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UserError) as exc:
        variant_spec(tiny_params(), "nope")
    msg = str(exc.value)
    assert "'nope'" in msg
    assert "known variants: bn_all, bn_dropout, bn_hidden, dropout, plain" in msg


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("epochs", -3), ("epochs", 1.5), ("batch_size", -1), ("batch_size", 0),
    ("learning_rate", 0), ("learning_rate", -0.01), ("learning_rate", "fast"),
    ("momentum", 1.0), ("shuffle", "yes"), ("train_limit", 0), ("steps_per_execution", 0),
])
def test_bad_train_values_name_the_field(field, value):
    params = tiny_params(**{field: value})
    with pytest.raises(UserError, match=rf"'train\.{field}' = {value!r}"):
        train_settings(params)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -5), ("learning_rate", 0.0)])
def test_bad_overrides_name_the_field(field, value):
    with pytest.raises(UserError, match=rf"'train\.{field}'"):
        train_settings(tiny_params(), {field: value})


def test_good_train_config_and_overrides():
    settings = train_settings(tiny_params(), {"epochs": 3, "batch_size": None, "learning_rate": 0.1})
    assert (settings.epochs, settings.batch_size, settings.learning_rate, settings.momentum, settings.shuffle) == (
        3, 128, 0.1, 0.0, True)
    assert settings.flat()["train.epochs"] == 3


def test_unknown_train_field_is_named():
    params = tiny_params()
    params["train"]["epoch"] = 2
    with pytest.raises(UserError, match=r"'train' has unknown field\(s\) \['epoch'\]"):
        train_settings(params)


def _with_variant(spec: dict, name: str = "x") -> dict:
    params = tiny_params()
    params["variants"][name] = spec
    return params


@pytest.mark.parametrize("field,value", [
    ("dropout_input", 1.0), ("dropout_input", -0.1), ("dropout_hidden", 1.5), ("dropout_hidden", "0.5"),
    ("bn_input", "true"), ("bn_hidden", 1), ("conv_bias", None),
])
def test_bad_spec_values_name_the_field(field, value):
    with pytest.raises(UserError, match=rf"'variants\.x\.{field}' = {value!r}"):
        variant_spec(_with_variant({field: value}), "x")


def test_unknown_spec_field_is_named():
    with pytest.raises(UserError) as exc:
        variant_spec(_with_variant({"bn_hiden": True}), "x")
    assert "'variants.x'" in str(exc.value) and "bn_hiden" in str(exc.value)
    assert "bn_hidden" in str(exc.value)  # the allowed fields are listed


def test_spec_must_be_a_mapping():
    with pytest.raises(UserError, match=r"'variants\.x' must be a mapping"):
        variant_spec(_with_variant([1, 2]), "x")


def test_empty_spec_is_the_no_bias_baseline():
    spec = variant_spec(_with_variant(None), "x")
    assert (spec.bn_input, spec.bn_hidden, spec.dropout_input, spec.dropout_hidden, spec.conv_bias) == (
        False, False, 0.0, 0.0, False)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 1\n    batch_size: 2\nseeds: [0]\n")
    with pytest.raises(UserError) as exc:
        Params.load(path)
    msg = str(exc.value)
    assert str(path) in msg and "YAML syntax error" in msg and "line 3" in msg


def test_missing_params_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Params.load(tmp_path / "absent.yaml")


# --- adding a variant is a params edit ------------------------------------------------------


def test_new_variant_from_params_only():
    params = _with_variant({"bn_input": True}, "bn_input_only")
    spec = variant_spec(params, "bn_input_only")
    model = build_lenet(spec)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "input_bn", "conv1"]
    assert names == _sequence(["bn"], [])
    assert [bn_site(layer.name) for layer in bn_layers(model)] == ["input"]
    assert parameter_counts(model) == {"total": 545_528, "trainable": 545_526, "non_trainable": 2}


def test_the_held_out_subset_is_seeded_sorted_and_whole_when_asked_for_all():
    from pipeline.train.convergence import held_out

    first, again = held_out(10_000, 2000), held_out(10_000, 2000)
    assert list(first) == list(again) == sorted(set(first)) and len(first) == 2000
    assert first.max() > 2000  # drawn from the whole test set, not its first images
    assert list(held_out(300, 500)) == list(range(300))


def test_dropout_after_every_batch_norm_sits_between_fc1_and_the_softmax_only():
    """Li et al.'s remedy as data: ``dropout_output`` adds one Dropout after fc1's tanh; the committed
    variants (dropout_output 0) build the same layers as before."""
    from pipeline.core.params import VariantSpec
    from pipeline.train.model import build_lenet

    last = build_lenet(VariantSpec(name="bn_dropout_last", bn_input=True, bn_hidden=True, dropout_output=0.5))
    names = [layer.name for layer in last.layers]
    assert [n for n in names if "dropout" in n] == ["fc1_out_dropout"]
    assert names[names.index("fc1_out_dropout") - 1] == "fc1_tanh" and names[-1] == "output"
    assert last.get_layer("fc1_out_dropout").rate == 0.5
    plain = build_lenet(VariantSpec(name="plain", conv_bias=True))
    assert not [n for n in (layer.name for layer in plain.layers) if "dropout" in n]
    assert build_lenet(VariantSpec(name="plain_nobias")).count_params() == 545_524
