import pytest
import yaml

from trickster.config import config_from_dict, load_config, preset_names, save_config
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
