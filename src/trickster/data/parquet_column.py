"""A Parquet column by --text-field: a top-level column, or a dotted path into struct columns
(`content.body`, as Hugging Face datasets' flatten() names a nested column); the line naming the
fields there are where a path stopped."""

from __future__ import annotations

from pathlib import Path

from trickster.errors import UserError

FIX = "pass --text-field COLUMN (a nested one as OUTER.INNER)"


def column_path(schema, name: str, path: Path) -> list[str]:
    """The names from a top-level column of `schema` (pyarrow's) down to the one `name` names: [name]
    for a top-level one (a column named with the dots itself first). Refused in one line when there
    is none, naming the fields at the level where the path stopped, or when it holds no strings,
    naming its type as the schema does (`int64`, `binary`), before any row is read."""
    import pyarrow as pa

    if name in schema.names:
        _check_holds_text(schema.field(name).type, name, path)
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
    _check_holds_text(kind, name, path)
    return parts


def _check_holds_text(kind, name: str, path: Path) -> None:
    """Strings (of any of Arrow's layouts, dictionary-encoded too) or a column of nulls alone pass;
    a struct's line names the fields inside it, one of which may hold the text."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return
    if pa.types.is_string_view(kind):
        return
    if pa.types.is_struct(kind):
        fields = [kind.field(i).name for i in range(kind.num_fields)]
        raise UserError(
            f"{path}: column '{name}' is a struct (it has: {', '.join(fields[:10])}); name the "
            f"field inside it that holds the text, as --text-field {name}.FIELD"
        )
    raise UserError(
        f"{path}: column '{name}' holds {kind}, not text; pass --text-field COLUMN naming a column of strings"
    )


def leaf_values(column, parts: list[str]) -> list:
    """The values of the column `parts` names, from a batch's `column` read with columns=[the
    dotted name] (its struct holds that branch only); None where an outer struct is null."""
    values = column.to_pylist()
    for key in parts[1:]:
        values = [None if value is None else value[key] for value in values]
    return values
