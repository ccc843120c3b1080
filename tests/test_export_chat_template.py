"""`export --chat-template FILE`: the template a model was fine-tuned with goes out with it, so that
transformers' apply_chat_template (and llama.cpp's chat, from the GGUF file) asks it the same way."""

from __future__ import annotations

import json

from trickster import cli
from trickster.serve.chat import Template
from trickster.train import checkpoint_load

from .test_gguf import read_gguf
from .test_hf import tiny_llama

# written the way fine-tune-export.md's chat records are: role, content, then the reply's cue
TEMPLATE = (
    "{% for message in messages %}\n{{ message.role }}: {{ message.content }}\n{% endfor %}\n"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CONVERSATION = [
    {"role": "user", "content": "Before we proceed any further, hear me speak."},
    {"role": "assistant", "content": "Speak, speak."},
    {"role": "user", "content": "You are all resolved rather to die than to famish?"},
]


def test_a_hugging_face_export_renders_conversations_as_chat_and_serve_do(trained_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE, encoding="utf-8")
    out = tmp_path / "hf"
    assert cli.main(["export", str(trained_run), "--out", str(out), "--chat-template", str(template)]) == 0
    assert f"chat template: {template}" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ours = checkpoint_load.load_checkpoint(trained_run).tokenizer
    assert rendered == Template(TEMPLATE, ours).render(CONVERSATION)
    assert rendered.endswith("user: You are all resolved rather to die than to famish?\nassistant:"), rendered
    # transformers 5 answers a BatchEncoding unless told otherwise, 4 a list
    ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, return_dict=False)
    assert list(ids) == ours.encode(rendered)


def test_an_export_without_a_template_has_none_and_an_empty_file_adds_none(trained_run, tmp_path):
    empty = tmp_path / "empty.jinja"
    empty.write_text("", encoding="utf-8")
    assert (
        cli.main(["export", str(trained_run), "--out", str(tmp_path / "hf"), "--chat-template", str(empty)])
        == 0
    )
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert "chat_template" not in config


def test_a_gguf_export_carries_the_template_for_llama_cpp(trained_run, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE, encoding="utf-8")
    out = tmp_path / "model.gguf"
    assert cli.main(["export", str(trained_run), "--out", str(out), "--chat-template", str(template)]) == 0
    fields, _ = read_gguf(out)
    assert fields["tokenizer.chat_template"] == TEMPLATE
    assert cli.main(["export", str(trained_run), "--out", str(tmp_path / "plain.gguf")]) == 0
    assert "tokenizer.chat_template" not in read_gguf(tmp_path / "plain.gguf")[0]


def test_an_empty_file_on_an_imported_tokenizer_keeps_its_template_and_names_no_file(tmp_path, capsys):
    """An empty --chat-template leaves an imported tokenizer's own template in place. export read
    tokenizer_config.json back, found that template there, and printed the empty file as the
    template it shipped."""
    src, _, hf_tok = tiny_llama(tmp_path)
    run, empty, out = tmp_path / "run", tmp_path / "empty.jinja", tmp_path / "hf"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    empty.write_text("", encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(out), "--chat-template", str(empty)]) == 0
    printed = capsys.readouterr().out
    assert "chat template:" not in printed, printed
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == hf_tok.chat_template
