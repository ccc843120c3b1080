"""A Parquet column by --text-field: a top-level column, or a dotted path into struct columns
(`content.body`, as Hugging Face datasets' flatten() names a nested column); the line naming the
fields there are where a path stopped."""

from __future__ import annotations

from pathlib import Path

from trickster.errors import UserError

FIX = "pass --text-field COLUMN (a nested one as OUTER.INNER)"


def column_path(schema, name: str, path: Path) -> list[str]:
    """The names from a top-level column of `schema` (pyarrow's) down to the one `name` names: [name]
    for a top-level one (a column named with the dots itself first); refused in one line when there
    is none, naming the fields at the level where the path stopped."""
    import pyarrow as pa

    if name in schema.names:
        return [name]
    parts = name.split(".")
    names, walked, kind = schema.names, [], None
    for key in parts:
        if kind is not None and not pa.types.is_struct(kind):
            raise UserError(
                f"{path}: column '{'.'.join(walked)}' holds {kind}, not a struct with '{key}'; "
                "pass --text-field COLUMN naming a column of strings"
            )
        if key not in names:
            there = "it has" if not walked else f"'{'.'.join(walked)}' has"
            raise UserError(f"{path} has no column '{name}' ({there}: {', '.join(names[:10])}); {FIX}")
        kind = schema.field(key).type if kind is None else kind.field(key).type
        names = [kind.field(i).name for i in range(kind.num_fields)] if pa.types.is_struct(kind) else []
        walked.append(key)
    return parts


def leaf_values(column, parts: list[str]) -> list:
    """The values of the column `parts` names, from a batch's `column` read with columns=[the
    dotted name] (its struct holds that branch only); None where an outer struct is null."""
    values = column.to_pylist()
    for key in parts[1:]:
        values = [None if value is None else value[key] for value in values]
    return values


def not_text(value, name: str, path: Path) -> UserError:
    """The line for a value of the column `name` that is no string: a struct's names the fields
    inside it, one of which may hold the text."""
    if isinstance(value, dict):
        return UserError(
            f"{path}: column '{name}' is a struct (it has: {', '.join(list(value)[:10])}); name the "
            f"field inside it that holds the text, as --text-field {name}.FIELD"
        )
    return UserError(
        f"{path}: column '{name}' holds {type(value).__name__}, not text; "
        "pass --text-field COLUMN naming a column of strings"
    )
