"""A character a char vocabulary lacks, said where the user can find it: a file's line and column
(eval --text), a prompt's column (generate, compare, a chat line). Shown as repr shows it, with its
code point where it is not ASCII: a Cyrillic 'а' and a Latin 'a' print alike."""

from __future__ import annotations

from pathlib import Path

from trickster.errors import UserError

ANY_TEXT = "a model whose tokenizer reads any text (byte, bpe or gpt2)"
FIX = "remove {them}, or use " + ANY_TEXT


class UnknownCharacter(UserError):
    """`text` holds `char`, which `vocabulary` (a char tokenizer's characters) does not."""

    def __init__(self, text: str, char: str, vocabulary: str):
        self.text, self.char, self.vocabulary = text, char, vocabulary
        self.index = text.index(char)  # encode stops at the first one
        super().__init__(self.line())

    def __reduce__(self):  # from a data preparation's worker: pickled as its arguments, not its line
        return UnknownCharacter, (self.text, self.char, self.vocabulary)

    def line(self, at: str = "", fix: str = FIX, holder: str = "the text") -> str:
        """The one line: what is missing (`at`: where, after the character), up to five more that
        `holder` holds and the vocabulary lacks (said one at a time, each fix met the next), and
        `fix`, with {them} for what to remove."""
        known = set(self.vocabulary)
        others = [c for c in dict.fromkeys(self.text) if c not in known and c != self.char]
        also = ""
        if others:
            listed = ", ".join(shown(c) for c in others[:5]) + (", ..." if len(others) > 5 else "")
            verb = "is" if len(others) == 1 else "are"
            also = f", nor {verb} {len(others)} more of {holder}'s characters ({listed})"
        return (
            f"{self.missing(at)} (only the {len(self.vocabulary)} characters of its training text){also}; "
            + fix.format(them="them" if others else "it")
        )

    def missing(self, at: str = "") -> str:
        """The character, and that the vocabulary lacks it, alone (for a line of its own words)."""
        return f"character {shown(self.char)}{at} is not in this model's character vocabulary"

    def column(self) -> int:
        """The character's column on its line, from 1."""
        return self.index - (self.text.rfind("\n", 0, self.index) + 1) + 1

    def in_file(
        self, path: str | Path, fix: str = "remove {them} from the file, or score the file with " + ANY_TEXT
    ) -> UserError:
        """The error for a text file: the line and column to look at, as an editor counts them."""
        line = self.text.count("\n", 0, self.index) + 1
        where = f"{path} line {line}, column {self.column()}"
        return UserError(f"{where}: {self.line(fix=fix, holder='the file')}")

    def in_prompt(self, what: str = "") -> str:
        """The line for a prompt typed on one line (`what`: '--prompt: ' names the option)."""
        return f"{what}{self.line(at=f' at column {self.column()}', holder='the prompt')}"


def shown(char: str) -> str:
    """repr, which escapes what would not be seen (a tab, a no-break space), and the code point of
    a character outside ASCII."""
    return repr(char) if char.isascii() else f"{char!r} (U+{ord(char):04X})"
