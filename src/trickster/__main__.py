"""`python -m trickster` (torchrun's workers run it so) and the `trickster` command ([project.scripts]).

A Ctrl-C ends the process at once from its first line here (starting.py), before cli.py's own
imports: only the interpreter's start comes before."""

from trickster import starting


def run() -> int:
    starting.end_at_once()
    from trickster.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
