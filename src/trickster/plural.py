"""A count with its noun in the right number, for the lines a user reads: "1 shard", "3 shards"."""


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """`count` (with thousands separators) and `singular`, or `plural` (default: singular + "s")."""
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"
