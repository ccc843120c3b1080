import copy
import re
import typing

import pytest
import yaml

from trickster.config import (
    SECTION_ALIASES,
    SECTIONS,
    LoraConfig,
    config_from_dict,
    load_config,
    preset_names,
    save_config,
)
from trickster.errors import UserError


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_roundtrips(tmp_path, name):
    cfg = load_config(preset=name)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_nano_has_the_tutorials_settings():
    cfg = load_config(preset="nano")
    m, t = cfg.model, cfg.training
    assert (m.vocab_size, m.hidden_dim, m.num_layers, m.num_heads, m.mlp_dim, m.max_seq_len) == (
        256,
        256,
        6,
        8,
        768,
        512,
    )
    assert (t.batch_size, t.max_steps, t.learning_rate, t.warmup_steps, t.min_lr, t.grad_clip) == (
        16,
        10000,
        3e-4,
        1000,
        3e-5,
        1.0,
    )
    assert (t.log_every, t.eval_every, t.save_every) == (50, 500, 1000)


def test_dotted_overrides_are_parsed_as_yaml_values():
    cfg = load_config(
        preset="tiny",
        overrides=[
            "training_config.max_steps=200",
            "device_config.device=cpu",
            "training_config.betas=[0.8, 0.9]",
            "model_config.num_kv_heads=2",
            "training_config.sample_prompt=JULIET:",
        ],
    )
    assert cfg.training.max_steps == 200 and cfg.device.device == "cpu"
    assert cfg.training.betas == (0.8, 0.9) and cfg.model.num_kv_heads == 2
    assert cfg.training.sample_prompt == "JULIET:"


def test_unknown_keys_get_a_suggestion():
    with pytest.raises(
        UserError,
        match=r"unknown key training_config.learning_rat \(did you mean training_config.learning_rate\?\)",
    ):
        config_from_dict({"training_config": {"learning_rat": 0.1}})
    with pytest.raises(
        UserError, match=r"unknown section 'trainig_config' \(did you mean training_config\?\)"
    ):
        config_from_dict({"trainig_config": {}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as info:
        config_from_dict(
            {
                "model_config": {"hidden_dim": 100, "num_heads": 3},
                "training_config": {"warmup_steps": 2000, "max_steps": 1000, "min_lr": 1.0},
            }
        )
    message = str(info.value)
    assert "model_config.hidden_dim (100) must be divisible by model_config.num_heads (3)" in message
    assert "training_config.warmup_steps must be < max_steps (got 2000 >= 1000)" in message
    assert "training_config.min_lr must be <= learning_rate" in message
    assert "\n" not in message


def test_wrong_types_name_the_key_and_the_value():
    with pytest.raises(UserError, match=r"training_config.batch_size: .*integer.*'sixteen'"):
        config_from_dict({"training_config": {"batch_size": "sixteen"}})
    with pytest.raises(UserError, match=r"model_config.dropout: .*less than 1"):
        config_from_dict({"model_config": {"dropout": 1.5}})


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_config:\n  hidden_dim: [256\ntraining_config: {}\n")
    with pytest.raises(UserError, match=r"malformed YAML at line \d+"):
        load_config(path)


def test_saved_config_uses_the_tutorials_section_names(tmp_path):
    save_config(load_config(preset="nano"), tmp_path / "c.yaml")
    assert list(yaml.safe_load((tmp_path / "c.yaml").read_text())) == [
        "model_config",
        "data_config",
        "training_config",
        "device_config",
        "logging_config",
    ]


def test_overrides_reach_any_depth_with_a_suggestion_at_every_level(tmp_path):
    deep = ["training_config.init_from=base", "training_config.lora.rank=4", "training_config.lora.alpha=8"]
    lora = load_config(preset="tiny", overrides=deep).training.lora
    assert (lora.rank, lora.alpha, lora.targets) == (4, 8.0, ["wq", "wv"])
    save_config(load_config(preset="tiny"), tmp_path / "saved.yaml")  # writes `lora: null`
    assert load_config(tmp_path / "saved.yaml", overrides=deep).training.lora.rank == 4
    for override, message in [
        (
            "training_config.lora.rnk=4",
            r"unknown key training_config.lora.rnk \(did you mean training_config.lora.rank\?\)",
        ),
        (
            "training_config.lroa.rank=4",
            r"unknown key training_config.lroa \(did you mean training_config.lora\?\)",
        ),
        (
            "trainig_config.lora.rank=4",
            r"unknown section 'trainig_config' \(did you mean training_config\?\)",
        ),
        (
            "training_config.lora.rank=0",
            r"training_config.lora.rank: input should be greater than 0 \(got 0\)",
        ),
        ("training_config.max_steps.x=1", r"training_config.max_steps is a value, not a group of keys"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(preset="tiny", overrides=["training_config.init_from=base", override])


def test_ddp_and_fsdp_together_are_refused_by_the_config():
    with pytest.raises(UserError, match="set device_config.enable_ddp or enable_fsdp, not both"):
        config_from_dict({"device_config": {"enable_ddp": True, "enable_fsdp": True}})


def _types(annotation) -> set:
    """The types an annotation names, through unions, Annotated and containers."""
    found = {annotation} if isinstance(annotation, type) else set()
    for arg in typing.get_args(annotation):
        found |= _types(arg)
    return found


def _settings(kind_test) -> list:
    """pytest params (raw config holding the key's section, dotted key, annotation) for every
    setting, LoRA's included, whose annotation's types pass `kind_test`."""
    found = []
    for alias, name in SECTION_ALIASES.items():
        for key, field in SECTIONS[name].model_fields.items():
            found.append(({}, f"{alias}.{key}", field.annotation))
    lora = {"training_config": {"init_from": "base", "lora": {}}}  # lora needs init_from
    for key, field in LoraConfig.model_fields.items():
        found.append((lora, f"training_config.lora.{key}", field.annotation))
    return [pytest.param(*f, id=f[1]) for f in found if kind_test(_types(f[2]))]


def _with(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    *parents, name = dotted.split(".")
    target = raw
    for parent in parents:
        target = target.setdefault(parent, {})
    target[name] = value
    return raw


NUMBERS = _settings(lambda types: bool(types & {int, float}) and bool not in types)
SWITCHES = _settings(lambda types: bool in types)


def test_every_kind_of_setting_is_found():
    numbers, switches = {p.values[1] for p in NUMBERS}, {p.values[1] for p in SWITCHES}
    assert {"training_config.max_steps", "training_config.betas", "training_config.lora.rank"} <= numbers
    assert {"training_config.resume", "device_config.compile", "logging_config.progress_bar"} <= switches
    assert len(numbers) > 40 and len(switches) == 10


@pytest.mark.parametrize(("raw", "key", "annotation"), NUMBERS)
def test_a_number_setting_refuses_true_and_false(raw, key, annotation):
    """pydantic's lax mode reads `max_steps: true` as 1: every number setting must refuse it."""
    value = [True, 1] if tuple in _types(annotation) else True
    refused = r"input should be (an integer|a number), not true or false \(got (true|\[true, 1\])\)"
    with pytest.raises(UserError, match=rf"{re.escape(key)}: {refused}"):
        config_from_dict(_with(raw, key, value))


@pytest.mark.parametrize(("raw", "key", "annotation"), SWITCHES)
def test_a_switch_takes_yaml_booleans_only(raw, key, annotation):
    """YAML's own booleans (true/false, yes/no, on/off, unquoted) and nothing else: pydantic
    alone would read 1, 0.0 or the text "t" as a boolean too."""
    section, name = key.split(".")
    for word, meaning in [("true", True), ("no", False), ("On", True), ("OFF", False)]:
        assert load_config(overrides=[f"{key}={word}"]).to_dict()[section][name] is meaning
    for value in [1, 0, 0.0, "1", "t"]:
        with pytest.raises(UserError, match=rf"{re.escape(key)}: (input should be|expected) true"):
            config_from_dict(_with(raw, key, value))
    with pytest.raises(UserError, match=rf"{re.escape(key)}: .* \(got 'yes'\); write it without quotes"):
        config_from_dict(_with(raw, key, "yes"))


def test_numbers_still_come_from_text_and_whole_floats():
    """Overrides are text, and YAML 1.1 reads `3e-4` (no dot) as text: both must still be numbers."""
    steps = ["training_config.max_steps=100", "training_config.warmup_steps=10"]
    cfg = load_config(overrides=[*steps, "training_config.learning_rate=1e-3"])
    assert cfg.training.max_steps == 100 and type(cfg.training.max_steps) is int
    assert cfg.training.learning_rate == 1e-3
    given = {"learning_rate": "3e-4", "max_steps": 2.0e3, "warmup_steps": "10"}
    t = config_from_dict({"training_config": given}).training
    assert (t.learning_rate, t.max_steps, t.warmup_steps) == (3e-4, 2000, 10)
    with pytest.raises(UserError, match=r"training_config.max_steps: .*fractional part \(got 1.5\)"):
        load_config(overrides=["training_config.max_steps=1.5"])


def test_an_empty_override_is_null_except_for_text():
    """As in a file, where `keep_last:` is null (keep all); a text setting keeps the empty text."""
    empty = ["training_config.keep_last=", "training_config.sample_prompt="]
    cfg = load_config(preset="tiny", overrides=["training_config.keep_last=3", *empty])
    assert cfg.training.keep_last is None and cfg.training.sample_prompt == ""
    assert load_config(overrides=["training_config.max_time="]).training.max_time is None


def test_betas_lie_in_zero_to_one():
    for betas, message in [
        ([1.5, 0.9], r"betas\[0\]: input should be less than 1 \(got 1.5\)"),
        ([0.9, -0.1], r"betas\[1\]: input should be greater than or equal to 0"),
    ]:
        with pytest.raises(UserError, match=rf"training_config.{message}"):
            config_from_dict({"training_config": {"betas": betas}})
    assert config_from_dict({"training_config": {"betas": [0.0, 0.999]}}).training.betas == (0.0, 0.999)
