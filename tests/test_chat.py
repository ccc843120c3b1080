"""`trickster chat` on a trained micro run: lines piped in, replies checked against `trickster
generate` on the text each reply continues (greedy, so both must write the same tokens)."""

from __future__ import annotations

import io
import sys

import pytest

from trickster import cli, commands_chat, streaming
from trickster.model import generate as generation

# each message on a line of its own: the conversation as the model reads it is plain text
TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]


def chat(monkeypatch, capsys, lines: list[str], *flags: str) -> str:
    """What `trickster chat` writes reading `lines` from a pipe; it must end with status 0."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    capsys.readouterr()
    assert cli.main(["chat", *flags]) == 0
    return capsys.readouterr().out


def continuation(capsys, run, prompt: str) -> str:
    """What `trickster generate --prompt PROMPT` writes after the prompt."""
    capsys.readouterr()
    assert cli.main(["generate", str(run), "--prompt", prompt, *GREEDY]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt) : -1]


def read_by_model(monkeypatch, trained_run) -> list[str]:
    """Every text the model is asked to continue, as it reads it (its ids decoded), in order."""
    from trickster.train import checkpoint_load, checkpoint_path

    tokenizer, asked = checkpoint_load.read_tokenizer(checkpoint_path.resolve(trained_run)), []
    real = commands_chat.stream  # chat's own calls: `generate` (continuation) streams too

    def recording(model, tokenizer_, ids, *args, **kwargs):
        asked.append(tokenizer.decode(ids))
        return real(model, tokenizer_, ids, *args, **kwargs)

    monkeypatch.setattr(commands_chat, "stream", recording)
    return asked


def replies(out: str) -> list[str]:
    """The replies in chat's output: each after "model> ", up to the next reply or note."""
    return [part.split("\n(")[0].removesuffix("\n") for part in out.split("model> ")[1:]]


def test_without_a_template_each_line_is_continued_as_generate_continues_it(monkeypatch, capsys, trained_run):
    out = chat(monkeypatch, capsys, ["ROMEO:", "", "/exit", "JULIET:"], str(trained_run), *GREEDY)
    assert "has no chat template: each line you type is continued on its own" in out
    assert out.endswith(f"ROMEO:{continuation(capsys, trained_run, 'ROMEO:')}\n")  # /exit: no JULIET


def test_without_a_template_reset_says_there_is_nothing_to_reset(monkeypatch, capsys, trained_run):
    """/reset, the command the chat guide names, was 'unknown command /reset' here: each line is
    its own prompt, so it has nothing to forget, and says so; an unknown command names what is
    offered."""
    out = chat(monkeypatch, capsys, ["/reset", "/foo", "ROMEO:"], str(trained_run), *GREEDY)
    assert "(nothing to reset: without a chat template each line is continued on its own)\n" in out
    assert "unknown command /reset" not in out
    assert "unknown command /foo: /exit (or Ctrl-D) ends\n" in out
    assert "a new conversation" not in out
    assert out.endswith(f"ROMEO:{continuation(capsys, trained_run, 'ROMEO:')}\n")


def test_without_a_template_a_line_the_model_cannot_read_is_not_sent_and_the_chat_goes_on(
    monkeypatch, capsys, trained_run
):
    # a character model never saw "é": that line alone is refused, as it is with a template
    out = chat(monkeypatch, capsys, ["café", "ROMEO:"], str(trained_run), *GREEDY)
    assert "(not sent: character 'é' (U+00E9) at column 4 is not in this model's character vocabulary" in out
    assert out.endswith(f"ROMEO:{continuation(capsys, trained_run, 'ROMEO:')}\n")


def test_each_reply_continues_the_whole_conversation_through_the_template(
    monkeypatch, capsys, trained_run, tmp_path
):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    asked = read_by_model(monkeypatch, trained_run)
    flags = [str(trained_run), "--chat-template", str(template), *GREEDY]
    out = chat(monkeypatch, capsys, ["ROMEO:", "KING:", "/reset", "KING:"], *flags)
    first = continuation(capsys, trained_run, "ROMEO:\n")
    # the second message is read after the first and the reply to it; /reset forgets both
    assert asked == ["ROMEO:\n", f"ROMEO:\n{first}\nKING:\n", "KING:\n"]
    assert replies(out)[0] == first
    assert "(a new conversation)" in out


def test_a_command_after_spaces_is_the_command_not_a_message(monkeypatch, capsys, trained_run, tmp_path):
    """ " /exit" (a space typed first) was sent to the model as a message, "/exit" ended the chat."""
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    asked = read_by_model(monkeypatch, trained_run)
    flags = [str(trained_run), "--chat-template", str(template), *GREEDY]
    out = chat(monkeypatch, capsys, ["ROMEO:", "  /reset", " /foo", "\t/exit  ", "KING:"], *flags)
    assert asked == ["ROMEO:\n"]  # reset, no message sent, and the chat ended before KING:
    assert "(a new conversation)" in out
    assert "unknown command /foo: /reset starts a new conversation, /exit (or Ctrl-D) ends\n" in out


def test_a_system_message_opens_every_conversation(monkeypatch, capsys, trained_run, tmp_path):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    asked = read_by_model(monkeypatch, trained_run)
    flags = [str(trained_run), "--chat-template", str(template), "--system", "KING:", *GREEDY]
    chat(monkeypatch, capsys, ["ROMEO:", "/reset", "ROMEO:"], *flags)
    assert asked == ["KING:\nROMEO:\n", "KING:\nROMEO:\n"]


def test_a_message_too_long_beside_the_system_one_says_both_count(monkeypatch, capsys, trained_run, tmp_path):
    """A --system of 30 characters and a message of 30 leave a reply of 12 no room in the micro
    model's 64: the line said 'your message is 62 tokens' of a message of 30."""
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    flags = [str(trained_run), "--chat-template", str(template), "--system", "a" * 30, *GREEDY]
    out = chat(monkeypatch, capsys, ["b" * 30, "ROMEO:"], *flags)
    assert "(not sent: with the chat template your message and the --system one are 62 tokens, and a" in out
    assert len(replies(out)) == 1  # the next line, short enough, is answered


def test_a_template_that_declines_a_lone_user_message_still_starts(
    monkeypatch, capsys, trained_run, tmp_path
):
    """--chat-template is rendered once at start on one user message; one its template refuses
    through raise_exception (here: a system message first) is the template's choice, not an error
    in it, so the chat starts and takes the conversations it accepts."""
    template = tmp_path / "chat.jinja"
    template.write_text(
        "{% if messages[0].role != 'system' %}{{ raise_exception('a system message comes first') }}"
        "{% endif %}{% for m in messages %}{{ m.content }}\n{% endfor %}"
    )
    asked = read_by_model(monkeypatch, trained_run)
    chat(
        monkeypatch,
        capsys,
        ["ROMEO:"],
        str(trained_run),
        "--chat-template",
        str(template),
        "--system",
        "KING:",
        *GREEDY,
    )
    assert asked == ["KING:\nROMEO:\n"]


def test_the_oldest_turns_make_way_when_the_context_is_full(monkeypatch, capsys, trained_run, tmp_path):
    """The micro model reads 64 tokens (characters), and a reply of 12 needs room. A turn is a
    message and its reply: the template refuses roles that do not alternate, as Llama-2's does, so
    a conversation left starting with a reply is not sent."""
    template = tmp_path / "chat.jinja"
    alternate = (
        "{% if (m.role == 'user') != (loop.index0 is even) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
    )
    users_only = (
        "{% for m in messages %}"
        + alternate
        + "{% if m.role == 'user' %}{{ m.content }}\n{% endif %}{% endfor %}"
    )
    template.write_text(users_only)
    asked = read_by_model(monkeypatch, trained_run)
    flags = [str(trained_run), "--chat-template", str(template), *GREEDY]
    too_long = "KING: " + "a" * 60
    lines = ["ROMEO: I will go.", "KING: Stay, sir.", "JULIET: Good night.", too_long, "NURSE: Madam!"]
    out = chat(monkeypatch, capsys, lines, *flags)
    assert asked == [  # (the template writes the user's messages only: lengths known without replies)
        "ROMEO: I will go.\n",
        "ROMEO: I will go.\nKING: Stay, sir.\n",
        "KING: Stay, sir.\nJULIET: Good night.\n",  # 18 + 17 + 20 + 12 > 64: ROMEO's turn made way
        "KING: Stay, sir.\nJULIET: Good night.\nNURSE: Madam!\n",  # 51 + 12: room enough
    ]
    assert out.count("(the oldest turn dropped to fit the model's context of 64 tokens)") == 1
    assert "(not sent: with the chat template your message is 67 tokens, and a reply needs 12 more" in out


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(monkeypatch, capsys, trained_run):
    real = generation.generate

    def interrupted_once(*args, **kwargs):
        for count, token in enumerate(real(*args, **kwargs)):
            if count == 3 and not calls:
                calls.append(count)
                raise KeyboardInterrupt
            yield token

    calls: list[int] = []
    monkeypatch.setattr(streaming, "generate", interrupted_once)
    out = chat(monkeypatch, capsys, ["ROMEO:", "ROMEO:"], str(trained_run), *GREEDY)
    romeo = continuation(capsys, trained_run, "ROMEO:")
    assert out.endswith(f"ROMEO:{romeo[:3]} [stopped]\nROMEO:{romeo}\n")


def at_terminal(monkeypatch, typed: list) -> list[str]:
    """stdin a terminal where `typed` is typed: a line, or the exception input() raises for it (after
    the last, Ctrl-D); the prompts input() was called with."""
    asked, lines = [], iter(typed)

    def terminal_input(prompt: str) -> str:
        asked.append(prompt)
        line = next(lines, EOFError())
        if isinstance(line, BaseException):
            raise line
        return line

    monkeypatch.setattr(sys, "stdin", io.StringIO())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", terminal_input)
    return asked


def checkpoint_said(capsys, run) -> str:
    """The line `trickster info --checkpoint RUN` names the checkpoint a run folder gives with."""
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(run)]) == 0
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("checkpoint: "))


@pytest.mark.parametrize(
    ("key", "status", "said"), [(EOFError(), 0, None), (KeyboardInterrupt(), 130, "interrupted\n")]
)
def test_at_a_terminal_it_prompts_and_ctrl_d_or_ctrl_c_at_the_prompt_ends_it(
    monkeypatch, capsys, trained_run, key, status, said
):
    """Ctrl-C at the prompt ended the chat with exit status 0, as Ctrl-D does; every other command
    (generate, train, serve) says `interrupted` and exits 130 on Ctrl-C, and so does chat now.
    The banner names the checkpoint the run folder gave, as `trickster info` does."""
    asked = at_terminal(monkeypatch, ["ROMEO:", key])
    capsys.readouterr()
    assert cli.main(["chat", str(trained_run), *GREEDY]) == status
    out, err = capsys.readouterr()
    assert asked == ["text> ", "text> "]
    romeo = continuation(capsys, trained_run, "ROMEO:")
    assert out.endswith(f"ROMEO:{romeo}\n\n")  # the prompt's line ended: `interrupted` on its own
    assert out.startswith(checkpoint_said(capsys, trained_run) + "\n")
    assert err == (said or "")


def test_a_run_folder_s_checkpoint_is_named_first(monkeypatch, capsys, trained_run):
    """chat picks a run folder's best (else its newest) checkpoint, and its banner says which in
    `trickster info`'s words before the first reply; a checkpoint folder given is the one used and
    named by the banner already: nothing more is said."""
    line = checkpoint_said(capsys, trained_run)
    best = trained_run / "checkpoints" / "best"
    assert line.startswith(f"checkpoint: {best} (step ")
    for target, first in ((trained_run, line), (best, f"{best} has no chat template")):
        monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO:\n"))
        assert cli.main(["chat", str(target), *GREEDY]) == 0
        out, err = capsys.readouterr()
        assert out.startswith(first) and out.count("checkpoint: ") == (target == trained_run), out
        assert "ROMEO:" in out and err == ""


def test_each_reply_samples_with_the_next_seed(monkeypatch, capsys, trained_run):
    """With --seed S the first reply is sampled as generate --seed S samples it, the second as
    --seed S+1: the same line typed twice gets two replies, and a talk can be replayed."""
    sampled = ["--temperature", "1.0", "--max-new-tokens", "12"]
    out = chat(monkeypatch, capsys, ["ROMEO:", "ROMEO:"], str(trained_run), *sampled, "--seed", "5")
    expected = []
    for seed in ("5", "6"):
        capsys.readouterr()
        assert cli.main(["generate", str(trained_run), "--prompt", "ROMEO:", *sampled, "--seed", seed]) == 0
        expected.append(capsys.readouterr().out)
    assert expected[0] != expected[1]
    assert out.endswith(expected[0] + expected[1])


def test_an_imported_llama_reads_each_line_after_its_start_token(monkeypatch, capsys, tmp_path):
    """Without a template a line is read as transformers' tokenizer reads it: <s> first, as every
    document the model learned from started."""
    pytest.importorskip("transformers")
    from .test_hf import tiny_llama

    src, _, hf_tok = tiny_llama(tmp_path)
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "run")]) == 0
    asked, real = [], generation.generate

    def recording(model, ids, *args, **kwargs):
        asked.append(list(ids))
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(streaming, "generate", recording)
    monkeypatch.setattr(commands_chat, "chat_template_of", lambda tokenizer: None)  # a base model's
    out = chat(monkeypatch, capsys, ["The king is"], str(tmp_path / "run"), *GREEDY)
    assert "has no chat template" in out
    assert asked == [hf_tok("The king is")["input_ids"]] and asked[0][0] == hf_tok.bos_token_id


def test_a_reply_ends_where_the_model_writes_its_end_of_text(monkeypatch, capsys, tmp_path):
    """An imported Llama whose end-of-text is the fourth token its greedy reply writes: the reply
    stops there, as generate's does."""
    pytest.importorskip("transformers")
    import json

    from .test_hf import tiny_llama

    src, _, hf_tok = tiny_llama(tmp_path)
    monkeypatch.setattr(commands_chat, "chat_template_of", lambda tokenizer: None)  # a base model's
    written, real = [], generation.generate

    def recording(*args, **kwargs):
        for token in real(*args, **kwargs):
            written.append(token)
            yield token

    monkeypatch.setattr(streaming, "generate", recording)
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "first")]) == 0
    unstopped = chat(monkeypatch, capsys, ["The king is"], str(tmp_path / "first"), *GREEDY)
    assert len(written) == 12
    end = hf_tok.convert_ids_to_tokens(written[3])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            config = json.loads((src / name).read_text())
            config["eos_token"] = end
            (src / name).write_text(json.dumps(config))
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "ends")]) == 0
    out = chat(monkeypatch, capsys, ["The king is"], str(tmp_path / "ends"), *GREEDY)
    stopped = continuation(capsys, tmp_path / "ends", "The king is")
    assert out.endswith(f"The king is{stopped}\n") and len(out) < len(unstopped)


def test_lines_piped_from_a_windows_file_are_read_without_their_carriage_returns(
    monkeypatch, capsys, trained_run
):
    out = chat(monkeypatch, capsys, ["ROMEO:\r", "JULIET:\r"], str(trained_run), *GREEDY)
    assert "not sent" not in out  # it refused every line: character '\r' is not in the vocabulary
    romeo, juliet = (continuation(capsys, trained_run, name) for name in ("ROMEO:", "JULIET:"))
    assert out.endswith(f"ROMEO:{romeo}\nJULIET:{juliet}\n")


def test_a_closed_stdin_is_a_chat_without_lines(monkeypatch, capsys, trained_run):
    monkeypatch.setattr(sys, "stdin", None)  # what Python gives for `trickster chat RUN <&-`
    capsys.readouterr()
    assert cli.main(["chat", str(trained_run), *GREEDY]) == 0  # an AttributeError's traceback
    assert capsys.readouterr().out.endswith("/exit (or Ctrl-D) ends.\n")


def test_a_latin_1_line_piped_under_a_strict_locale_is_not_sent_and_the_chat_goes_on(
    monkeypatch, capsys, trained_run
):
    """Under en_US.UTF-8 Python reads stdin with the strict error handler (under C.UTF-8 it keeps
    bad bytes): a Latin-1 line piped in ended the chat in a UnicodeDecodeError's traceback before
    the line's check could say it is not UTF-8."""
    piped = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nROMEO:\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", piped)
    capsys.readouterr()
    assert cli.main(["chat", str(trained_run), *GREEDY]) == 0
    out = capsys.readouterr().out
    assert "(not sent: this line is not UTF-8 text (byte 0xe9 at character 3)" in out
    assert out.endswith(f"ROMEO:{continuation(capsys, trained_run, 'ROMEO:')}\n")


def test_ctrl_c_in_generate_ends_the_text_s_line_before_it_says_interrupted(monkeypatch, capsys, trained_run):
    real = generation.generate

    def interrupted(*args, **kwargs):
        for count, token in enumerate(real(*args, **kwargs)):
            if count == 3:
                raise KeyboardInterrupt
            yield token

    romeo = continuation(capsys, trained_run, "ROMEO:")
    monkeypatch.setattr(streaming, "generate", interrupted)
    assert cli.main(["generate", str(trained_run), "--prompt", "ROMEO:", *GREEDY]) == 130
    assert capsys.readouterr() == (f"ROMEO:{romeo[:3]}\n", "interrupted\n")  # the text had no line end


def test_a_typed_line_that_is_not_utf8_is_refused_in_the_words_of_a_piped_one(
    monkeypatch, capsys, trained_run
):
    """A terminal whose encoding's error handler is strict (en_US.UTF-8) raises in input() for a
    Latin-1 byte typed: chat said '(byte 0xe9)' there, '(byte 0xe9 at character 3)' for the same
    line piped in, and generate's --prompt said it a third way. One sentence, where it is."""
    at_terminal(
        monkeypatch, [UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte"), "ROMEO:"]
    )
    capsys.readouterr()
    assert cli.main(["chat", str(trained_run), *GREEDY]) == 0
    typed = capsys.readouterr().out
    piped = chat(monkeypatch, capsys, ["caf\udce9", "ROMEO:"], str(trained_run), *GREEDY)
    assert cli.main(["generate", str(trained_run), "--prompt", "caf\udce9", *GREEDY]) == 2
    problem = (
        "is not UTF-8 text (byte 0xe9 at character 3); set your terminal to UTF-8, or convert the "
        "text (iconv -t utf-8)"
    )
    assert capsys.readouterr().err == f"error: --prompt {problem}\n"
    romeo = f"ROMEO:{continuation(capsys, trained_run, 'ROMEO:')}\n"
    assert typed.endswith(f"(not sent: this line {problem})\n{romeo}\n")  # Ctrl-D's line end last
    assert piped.endswith(f"(not sent: this line {problem})\n{romeo}")


@pytest.mark.parametrize("model", ["char", "imported"])
def test_a_line_that_is_not_utf8_is_not_sent_and_says_so(monkeypatch, capsys, trained_run, tmp_path, model):
    """A line piped from a Latin-1 file (Python keeps its byte 0xe9 as U+DCE9): a char model called
    it a character not in its vocabulary ('\\udce9'); an imported tokenizer could not encode it."""
    run = trained_run
    if model == "imported":
        pytest.importorskip("transformers")
        from .test_hf import tiny_llama

        run = tmp_path / "run"
        assert cli.main(["import", "hf", str(tiny_llama(tmp_path)[0]), "--out", str(run)]) == 0
        monkeypatch.setattr(commands_chat, "chat_template_of", lambda tokenizer: None)  # a base model's
    out = chat(monkeypatch, capsys, ["caf\udce9", "ROMEO:"], str(run), *GREEDY)
    assert "(not sent: this line is not UTF-8 text (byte 0xe9 at character 3); set your terminal" in out
    assert out.endswith(f"ROMEO:{continuation(capsys, run, 'ROMEO:')}\n")
