import copy
import re
import typing
from decimal import Decimal

import pytest
import yaml

from trickster import cli
from trickster.config import (
    MAX_ACCUMULATION,
    SECTION_ALIASES,
    SECTIONS,
    LoraConfig,
    config_from_dict,
    load_config,
    save_config,
)
from trickster.errors import UserError
from trickster.presets import preset_names

from .conftest import events


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
    assert "training_config.warmup_steps must be < training_config.max_steps (got 2000 >= 1000)" in message
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
    assert len(numbers) > 40 and len(switches) == 11


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
    with pytest.raises(UserError, match=r"training_config.max_steps: .*whole number \(got 1.5\)"):
        load_config(overrides=["training_config.max_steps=1.5"])


def test_an_empty_override_is_null_except_for_text_and_paths():
    """As in a file, where `keep_last:` is null (keep all); a text setting keeps the empty text. A
    path that may be none is refused: `init_from=$BASE` with BASE unset trained from scratch."""
    empty = ["training_config.keep_last=", "training_config.sample_prompt="]
    cfg = load_config(preset="tiny", overrides=["training_config.keep_last=3", *empty])
    assert cfg.training.keep_last is None and cfg.training.sample_prompt == ""
    assert load_config(overrides=["training_config.max_time="]).training.max_time is None
    for key in ("training_config.init_from", "training_config.hellaswag_file", "data_config.path"):
        for value in ("", " "):
            with pytest.raises(UserError, match=f"{key}: an empty path"):
                load_config(preset="tiny", overrides=[f"{key}={value}"])
    assert load_config(overrides=["training_config.init_from=null"]).training.init_from is None


def test_betas_lie_in_zero_to_one():
    """1 itself is refused too: with beta2 = 1 Adam's second moment stays 0 and its bias correction
    1 - beta2^t is 0, so the first update divides by zero."""
    for betas, message in [
        ([1.5, 0.9], r"betas\[0\]: input should be less than 1 \(got 1.5\)"),
        ([0.9, -0.1], r"betas\[1\]: input should be greater than or equal to 0"),
        ([0.9, 1.0], r"betas\[1\]: input should be less than 1 \(got 1.0\)"),
        ([1.0, 0.99], r"betas\[0\]: input should be less than 1 \(got 1.0\)"),
    ]:
        with pytest.raises(UserError, match=rf"training_config.{message}"):
            config_from_dict({"training_config": {"betas": betas}})
    assert config_from_dict({"training_config": {"betas": [0.0, 0.999]}}).training.betas == (0.0, 0.999)


def test_a_setting_of_two_values_given_another_shape_is_one_line_in_yaml_s_words():
    """pydantic says "a valid tuple", "tuple should have at most 2 items" and "field required" at
    each place missing: Python's words, and two problems for `profile_steps: []`."""
    for section, key, value, shape, got in [
        ("training_config", "betas", 0.9, "such as [0.9, 0.95]", "0.9"),
        ("training_config", "betas", [0.9], "such as [0.9, 0.95]", "[0.9]"),
        ("training_config", "betas", [0.9, 0.95, 0.99], "such as [0.9, 0.95]", "[0.9, 0.95, 0.99]"),
        ("logging_config", "profile_steps", [], "[first, last]", "[]"),
        ("logging_config", "profile_steps", "[2, 3", "[first, last]", "'[2, 3'"),
        ("device_config", "mesh_shape", 2, "[replicate, shard]", "2"),
    ]:
        with pytest.raises(UserError) as refused:
            config_from_dict({section: {key: value}})
        line = f"config: {section}.{key}: input should be a list of 2 in brackets, {shape} (got {got})"
        assert str(refused.value) == line


INTEGERS = _settings(lambda types: int in types and not types & {float, bool})
FLOATS = _settings(lambda types: float in types and bool not in types)
# a valid value, and what else it needs, for each setting whose default is not a number
NOT_DEFAULT = {
    "model_config.vocab_size": (65, {}),
    "model_config.num_kv_heads": (4, {}),
    "training_config.global_batch": (64, {"batch_size": "auto"}),
    "training_config.global_batch_tokens": (500000, {"batch_size": "auto"}),
    "training_config.seq_len": (256, {}),
    "training_config.keep_last": (3, {}),
    "training_config.max_time": (3600, {}),
    "training_config.sample_every": (100, {}),
    "training_config.hellaswag_every": (500, {}),
    "device_config.threads": (2, {}),
    "device_config.mesh_shape": ([1, 2], {}),
    "device_config.memory_gib": (12.5, {}),
    "device_config.peak_tflops": (312.0, {}),
    "logging_config.profile_steps": ([100, 200], {}),
}


def _valid(raw: dict, key: str) -> tuple:
    """(raw config with what the key needs, a valid value of the key): its default, or NOT_DEFAULT's."""
    section, *_, name = key.split(".")
    value, needs = NOT_DEFAULT.get(key, (None, {}))
    if value is None:
        value = config_from_dict(raw).to_dict()[section].get(name)
        if key.startswith("training_config.lora."):
            value = config_from_dict(raw).training.lora.model_dump()[name]
    raw = copy.deepcopy(raw)
    raw.setdefault(section, {}).update(needs)
    return raw, value


def _scientific(number: float, exponent_sign: str = "") -> str:
    """1337 -> 1.337e3, 0.0003 -> 3e-4: the shortest mantissa, no + on the exponent by default."""
    mantissa, exponent = f"{number:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    sign = "-" if int(exponent) < 0 else exponent_sign
    return f"{mantissa}e{sign}{abs(int(exponent))}"


def _spellings(value: int) -> list[str]:
    """How people write a big whole number: 1e4, 1E4, 1.0e+4 (YAML 1.1's float), 10000.0."""
    text = _scientific(value)
    plus = _scientific(value, "+")
    return [text, text.upper(), plus if "." in plus else plus.replace("e", ".0e"), f"{value}.0"]


def _without_a_dot(number: float) -> str:
    """0.95 -> 95e-2, 0.0003 -> 3e-4, 10000.0 -> 1e4: what YAML 1.1 reads as text."""
    exact = Decimal(repr(number)).normalize().as_tuple()
    return f"{'-' if exact.sign else ''}{''.join(map(str, exact.digits))}e{exact.exponent}"


def _each(value, spell):
    return "[" + ", ".join(map(spell, value)) + "]" if isinstance(value, list) else spell(value)


def _overrides(raw: dict) -> list[str]:
    return [f"{section}.{key}={value}" for section, keys in raw.items() for key, value in _flat(keys)]


def _flat(keys: dict, prefix: str = ""):
    for key, value in keys.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize(("raw", "key", "annotation"), INTEGERS)
def test_an_integer_setting_takes_a_whole_number_in_scientific_notation(raw, key, annotation, tmp_path):
    """`max_steps: 1e4` is 10000, in a file and in an override: YAML 1.1 reads 1e4 and 1.5e3 as
    text (its floats need a dot and a signed exponent) and 1.0e+4 and 10000.0 as floats."""
    raw, value = _valid(raw, key)
    section, *_, name = key.split(".")
    for index in range(4):
        spelled = _each(value, lambda v, index=index: _spellings(v)[index])
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(_with(raw, key, "PLACEHOLDER")).replace("PLACEHOLDER", spelled))
        from_file = load_config(path)
        from_override = load_config(overrides=[*_overrides(raw), f"{key}={spelled}"])
        for cfg in (from_file, from_override):
            got = cfg.to_dict()[section]
            got = got["lora"][name] if ".lora." in key else got[name]
            assert got == value and {type(v) for v in (got if isinstance(got, list) else [got])} == {int}, (
                spelled
            )


@pytest.mark.parametrize(("raw", "key", "annotation"), INTEGERS)
def test_an_integer_setting_refuses_a_number_that_is_not_whole(raw, key, annotation):
    raw, value = _valid(raw, key)
    tiny = "1e-99999999999999999999"  # an exponent past what Decimal holds
    for given, shown in [("1.5e0", "'1.5e0'"), ("1e-3", "'1e-3'"), ("2.5", "2.5"), (tiny, tiny)]:
        spelled = _each(value, lambda v, given=given: given)
        advice = r"(?: of seconds: write [^(]*)?"  # max_time's says what to write (a test of its own below)
        whole = rf"input should be a whole number{advice} \(got .*{shown}.*\)$"
        message = rf"^command line: {re.escape(key)}: {whole}"
        with pytest.raises(UserError, match=message):
            load_config(overrides=[*_overrides(raw), f"{key}={spelled}"])


@pytest.mark.parametrize(("raw", "key", "annotation"), INTEGERS)
def test_an_integer_too_big_for_int64_is_one_line_not_an_overflow(raw, key, annotation):
    raw, value = _valid(raw, key)
    # 1.0e+400 is YAML's infinity; 1e99999999999999999999 has an exponent past what Decimal holds
    for given in ["1e30", "1.0e+400", "1e999999999", "1e99999999999999999999", str(2**63)]:
        spelled = _each(value, lambda v, given=given: given)
        message = rf"^command line: {re.escape(key)}: input should be less than {2**63} = 2\*\*63 \(got "
        with pytest.raises(UserError, match=message):
            load_config(overrides=[*_overrides(raw), f"{key}={spelled}"])
    assert load_config(overrides=["training_config.seed=9.2e18"]).training.seed == 9_200_000_000_000_000_000


def test_range_checks_apply_to_the_converted_number():
    for given, message in [
        ("0e0", r"max_steps: input should be greater than 0 \(got 0\)"),
        ("-1e3", r"max_steps: input should be greater than 0 \(got -1000\)"),
        ("2e4", r"warmup_steps must be < training_config.max_steps \(got 20000 >= 10000\)"),
    ]:
        setting = "max_steps" if "max_steps:" in message else "warmup_steps"
        with pytest.raises(UserError, match=message):
            load_config(overrides=[f"training_config.{setting}={given}"])
    with pytest.raises(UserError, match=r"max_steps: input should be an integer, not true or false"):
        load_config(overrides=["training_config.max_steps=yes"])


@pytest.mark.parametrize(("raw", "key", "annotation"), FLOATS)
def test_a_float_setting_takes_scientific_notation_without_a_dot(raw, key, annotation, tmp_path):
    """YAML 1.1 reads `3e-4` as text: every float setting must read it as the number."""
    raw, value = _valid(raw, key)
    section, *_, name = key.split(".")
    spelled = _each(value, _without_a_dot)
    assert isinstance(yaml.safe_load(spelled if isinstance(value, list) else f"[{spelled}]")[0], str)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_with(raw, key, "PLACEHOLDER")).replace("PLACEHOLDER", spelled))
    for cfg in (load_config(path), load_config(overrides=[*_overrides(raw), f"{key}={spelled}"])):
        got = cfg.to_dict()[section]
        assert (got["lora"][name] if ".lora." in key else got[name]) == value


def test_a_run_driven_by_overrides_in_scientific_notation_runs_that_many_steps(micro, tmp_path):
    """`trickster train ... training_config.max_steps=1e1`: ten optimizer steps, one train event
    each (log_every=1e0), evaluations at 0, 5 and 10 (eval_every=5e0), and 10 in the saved config."""
    path = tmp_path / "micro.yaml"
    save_config(micro(training_config={"sample_tokens": 0}), path)
    scientific = ["max_steps=1e1", "log_every=1e0", "eval_every=5e0", "save_every=1.0e+1", "warmup_steps=2E0"]
    argv = ["train", "--config", str(path), "--no-progress", "training_config.learning_rate=3e-3"]
    assert cli.main([*argv, *(f"training_config.{s}" for s in scientific)]) == 0
    run = tmp_path / "run"
    assert [e["step"] for e in events(run, "train")] == list(range(1, 11))
    assert [e["step"] for e in events(run, "eval")] == [0, 5, 10]
    saved = yaml.safe_load((run / "config.yaml").read_text())["training_config"]
    assert (saved["max_steps"], saved["warmup_steps"], saved["learning_rate"]) == (10, 2, 3e-3)


def test_a_bad_value_is_said_to_come_from_where_it_was_written(tmp_path):
    """A value given on the command line is not looked for in the file the message names."""
    path = tmp_path / "my.yaml"
    path.write_text("training_config:\n  max_steps: lots\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: training_config\.max_steps: "):
        load_config(path, overrides=["training_config.seed=3"])
    with pytest.raises(
        UserError, match=rf"^{re.escape(str(path))} and command line: .*dropout.*; .*max_steps"
    ):
        load_config(path, overrides=["model_config.dropout=2"])
    path.write_text("training_config:\n  max_steps: 300\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"^command line: training_config\.max_steps: input should be a whole number"
    ):
        load_config(path, overrides=["training_config.max_steps=1.5"])
    with pytest.raises(UserError, match=r"^command line: unknown key training_config\.max_stepz"):
        load_config(preset="tiny", overrides=["training_config.max_stepz=3"])
    # the preset's warmup (100) is left for the run to fit to 30 steps (train/fitted.py); given, refused
    assert load_config(preset="tiny", overrides=["training_config.max_steps=30"]).training.warmup_steps == 100
    with pytest.raises(
        UserError, match=r"^command line: .*\(got 100 >= 30\); set training_config\.warmup_steps=3,"
    ):
        load_config(
            preset="tiny", overrides=["training_config.max_steps=30", "training_config.warmup_steps=100"]
        )
    # the override's key as a whole name: global_batch is not global_batch_tokens, written in the file
    path.write_text("training_config:\n  global_batch_tokens: 0\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: training_config\.global_batch_tokens: "):
        load_config(path, overrides=["training_config.global_batch="])
    # a problem that names the override's section, then the key by its last name: the preset set
    # batch_size 16, the command line the batch it refuses
    for value in ("5e5", "500000"):
        with pytest.raises(
            UserError, match=r"^command line: training_config\.global_batch and global_batch_tokens "
        ):
            load_config(preset="tiny", overrides=[f"training_config.global_batch_tokens={value}"])
    # a group given a value: its keys, not pydantic's "a valid dictionary or instance of LoraConfig"
    for value in ("true", "8", "[wq, wv]"):
        with pytest.raises(
            UserError,
            match=r"^command line: training_config\.lora must be a mapping of keys to values, "
            r"\{rank: \.\.\., alpha: \.\.\., targets: \.\.\.\} \(got ",
        ):
            load_config(preset="tiny", overrides=[f"training_config.lora={value}"])
    # a problem of the group a deeper override sets (LoRA without init_from): a preset or a run's
    # config.yaml never set lora, and was blamed
    with pytest.raises(UserError, match=r"^command line: training_config\.lora adapts existing weights"):
        load_config(preset="tiny", overrides=["training_config.lora.rank=4"])


def test_max_time_with_a_fraction_of_seconds_says_what_to_write(tmp_path):
    """A number of seconds is whole; 90.5 (quoted or not) names the whole numbers and the duration
    that work, and what it names is taken."""
    from trickster.units import parse_duration

    for written in ('"90.5"', "90.5"):
        (tmp_path / "c.yaml").write_text(f"training_config:\n  max_time: {written}\n")
        with pytest.raises(UserError, match=re.escape("whole number of seconds: write 90 or 91, or 90.5s")):
            load_config(tmp_path / "c.yaml")
    for fix, seconds in (("90", 90), ("91", 91), ("90.5s", 90.5)):
        cfg = load_config(overrides=[f"training_config.max_time={fix}"])
        assert parse_duration(cfg.training.max_time) == seconds
    with pytest.raises(UserError, match="not true or false"):
        load_config(overrides=["training_config.max_time=true"])


def test_yaml_merge_keys_give_defaults_that_the_mapping_overrides(tmp_path):
    """`<<: *base` (YAML's merge key) is valid YAML: it was refused as 'malformed YAML ... could not
    determine a constructor for the tag merge' by the loader that refuses a key given twice."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "model_config:\n  <<: {num_layers: 3, hidden_dim: 64, num_heads: 4}\n  hidden_dim: 128\n"
        "training_config:\n  max_steps: 10\n  warmup_steps: 1\n  max_steps: 20\n"
    )
    with pytest.raises(UserError, match="'max_steps' is given twice"):
        load_config(path)  # a key given twice in the mapping's own keys is still refused
    path.write_text(path.read_text().replace("  max_steps: 20\n", ""))
    model = load_config(path).model
    assert (model.num_layers, model.hidden_dim, model.num_heads) == (3, 128, 4)


def test_a_merge_key_can_take_its_defaults_from_an_x_key(tmp_path):
    """training.md says `<<: *base` takes the keys of `base` as defaults, but an anchor needs a key
    to stand under, and any top-level key but a section was 'unknown section': only an inline
    mapping could be merged. Top-level keys starting with x- are set aside for anchors (as Docker
    Compose's), and a misspelt section is still refused."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        "x-small: &small {num_layers: 3, hidden_dim: 64, num_heads: 4}\n"
        "model_config:\n  <<: *small\n  hidden_dim: 128\n"
    )
    model = load_config(path).model
    assert (model.num_layers, model.hidden_dim, model.num_heads) == (3, 128, 4)
    path.write_text("small: &small {num_layers: 3}\nmodel_config:\n  <<: *small\n")
    with pytest.raises(UserError, match="unknown section 'small'"):
        load_config(path)


def test_a_wandb_project_name_is_checked_only_when_wandb_is_used(tmp_path):
    """W&B's rules for a project name matter only to a run that logs to W&B: a config that does not
    (an older run's config.yaml, say, with wandb_project: team/nano left unused) must still load, or
    its checkpoints could no longer be generated from, served or resumed."""
    cfg = load_config(overrides=["logging_config.wandb_project=team/nano"])
    assert cfg.logging.wandb_project == "team/nano" and not cfg.logging.use_wandb
    load_config(overrides=["logging_config.wandb_project=" + "p" * 200])
    with pytest.raises(UserError, match=r"logging_config.wandb_project: a W&B project name cannot hold /"):
        load_config(overrides=["logging_config.use_wandb=true", "logging_config.wandb_project=team/nano"])
    with pytest.raises(UserError, match="logging_config.wandb_project: .*at most 128 characters"):
        load_config(overrides=["logging_config.use_wandb=true", "logging_config.wandb_project=" + "p" * 200])


def test_a_date_is_read_as_the_text_it_is_written_as(tmp_path):
    """YAML 1.1 reads an unquoted 2024-01-01 as a date: a number setting showed it as
    `datetime.date(2024, 1, 1)` in its error, and a text setting (a prompt, a folder) refused it.
    No setting is a date, so it stays text: the error shows it as written, a text setting takes it."""
    path = tmp_path / "date.yaml"
    path.write_text("training_config:\n  learning_rate: 2024-01-01\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert "training_config.learning_rate: input should be a valid number" in str(info.value)
    assert "(got '2024-01-01')" in str(info.value) and "datetime" not in str(info.value)
    with pytest.raises(UserError, match=r"\(got '2024-01-01 10:00:00'\)"):
        load_config(overrides=["training_config.max_steps=2024-01-01 10:00:00"])
    path.write_text(
        "training_config:\n  sample_prompt: 2024-01-01\nlogging_config:\n  output_dir: 2024-11-30\n"
    )
    cfg = load_config(path)
    assert (cfg.training.sample_prompt, cfg.logging.output_dir) == ("2024-01-01", "2024-11-30")


def test_gradient_accumulation_and_rope_theta_have_limits():
    """gradient_accumulation_steps: 1e18 started a run whose first step never ended (5.1e20
    tokens a step); rope_theta: 1e18 was taken. Each is one line naming the limit; the limits
    themselves are taken."""
    training = {"gradient_accumulation_steps": MAX_ACCUMULATION}
    assert config_from_dict({"training_config": training}).training.gradient_accumulation_steps == 10**6
    with pytest.raises(
        UserError,
        match=r"training_config.gradient_accumulation_steps: input should be less than or equal to 1000000",
    ):
        config_from_dict({"training_config": {"gradient_accumulation_steps": "1e18"}})
    assert config_from_dict({"model_config": {"rope_theta": 1e12}}).model.rope_theta == 1e12
    with pytest.raises(
        UserError, match=r"model_config.rope_theta: input should be less than or equal to 1000000000000 "
    ):
        config_from_dict({"model_config": {"rope_theta": "1e18"}})


@pytest.mark.parametrize(
    ("key", "past", "message", "at"),
    [
        ("muon_momentum", 1.0, "input should be less than 1 (got 1.0)", 0.999),  # no decay: grows forever
        ("spike_factor", 1.0, "input should be greater than 1 (got 1.0)", 1.01),  # any loss over the median
        ("spike_window", 1, "input should be greater than 1 (got 1)", 2),  # a median of the loss itself
        ("learning_rate", 1.5, "input should be less than or equal to 1 (got 1.5)", 1.0),
        ("sample_tokens", 100_001, "input should be less than or equal to 100000 (got 100001)", 100_000),
    ],
)
def test_a_limit_refuses_the_first_value_past_it_and_takes_the_last_inside(key, past, message, at):
    """Each limit written out at its edge, so that a check loosened by one step (lt -> le, gt -> ge,
    a bound moved) is seen: the value just past it is one line naming the key, the edge is taken."""
    with pytest.raises(UserError) as err:
        config_from_dict({"training_config": {key: past}})
    assert f"training_config.{key}: {message}" in str(err.value)
    assert getattr(config_from_dict({"training_config": {key: at}}).training, key) == at


def test_the_checks_across_settings_at_their_edges():
    """An odd head width (hidden_dim 36 over 4 heads: 9) cannot be paired by rotate-half; an even
    one (40 / 4 = 10) can. warmup_steps must end before max_steps (99 of 100 is taken, 100 is
    not); min_lr may equal learning_rate (a constant rate); weight decay x learning rate of exactly
    1 would zero every decayed weight at each step (1 - 0.5 x 2), just below it is taken."""
    with pytest.raises(UserError) as err:
        config_from_dict({"model_config": {"hidden_dim": 36, "num_heads": 4}})
    assert "model_config.hidden_dim / num_heads must be even for rotary embeddings (got 36 / 4 = 9)" in str(
        err.value
    )
    assert config_from_dict({"model_config": {"hidden_dim": 40, "num_heads": 4}}).model.head_dim == 10
    schedule = {"max_steps": 100, "warmup_steps": 99}
    assert config_from_dict({"training_config": schedule}).training.warmup_steps == 99
    with pytest.raises(
        UserError, match=r"warmup_steps must be < training_config.max_steps \(got 100 >= 100\)"
    ):
        config_from_dict({"training_config": {**schedule, "warmup_steps": 100}})
    constant = config_from_dict({"training_config": {"learning_rate": 1e-3, "min_lr": 1e-3}})
    assert constant.training.min_lr == constant.training.learning_rate
    with pytest.raises(UserError, match=r"min_lr must be <= learning_rate \(got 0.0011 > 0.001\)"):
        config_from_dict({"training_config": {"learning_rate": 1e-3, "min_lr": 1.1e-3}})
    assert config_from_dict({"training_config": {"learning_rate": 0.5, "weight_decay": 1.99}})
    with pytest.raises(UserError, match=r"weight_decay x learning_rate must be < 1 \(got 2 x 0.5\)"):
        config_from_dict({"training_config": {"learning_rate": 0.5, "weight_decay": 2}})
