"""What every config section shares (Section): unknown keys refused, each field's docstring as its
`--help` text, assignments validated, and numbers as people write them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from trickster.config_errors import annotated_kinds
from trickster.units import whole_number


class Section(BaseModel):
    """A config section. Switches are StrictBool: they take YAML's booleans (true/false, yes/no,
    on/off) and nothing else, where pydantic alone would also take 1, 0 or the text "yes"."""

    # inf and nan are refused: `learning_rate: .inf` would only show as non-finite losses later
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_as_people_write_them(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false where a number is expected: pydantic reads `max_steps: true` as 1.
        Numbers given as text stay accepted (YAML reads `3e-4` as text, and overrides are text);
        an integer setting also takes a whole number written as 1e4, 1.5e3 or 10000.0 (so
        `max_steps: 1e4` is 10000), and refuses 1.5e0 or one past int64 in one line."""
        kinds = annotated_kinds(cls.model_fields[info.field_name].annotation)
        given = value if isinstance(value, list | tuple) else [value]
        if bool not in kinds and kinds & {int, float} and any(isinstance(v, bool) for v in given):
            number = "an integer" if not kinds & {float, str} else "a number"
            raise ValueError(f"input should be {number}, not true or false")
        if int not in kinds or float in kinds:
            return value
        numbers = [whole_number(v) if isinstance(v, int | float | str) else v for v in given]
        return numbers if isinstance(value, list | tuple) else numbers[0]
