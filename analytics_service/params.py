"""What the admin API accepts, declared once: its query parameters and its JSON body.

Each is a pydantic model. The handlers validate requests with it, and openapi.py puts its
JSON Schema into the document, so the document and the service cannot disagree about a
single value. A refusal is a 400 in the API's own shape, `{"error": {"code", "message"}}`,
whose message starts with the parameter's name.

Rules that need two values or the clock are not in a model, because no schema can state
them: `from` after `to` and a range over five years (stats.StatsQuery), and an import's
dates being distinct, past and not counted by this service (imports.py, api/admin.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from werkzeug.datastructures import MultiDict

from .errors import ApiError
from .sites import MAX_BASELINE

# Dates outside these bounds are refused: near date.min/date.max the default range and the
# week/month zero-fill would step past what `date` can hold.
FIRST_DATE, LAST_DATE = date(1900, 1, 1), date(9000, 12, 31)
# The same bounds as a pattern, which the document carries (a JSON Schema cannot bound a
# date otherwise); calendar validity (no 02-30) is `format: date` and date.fromisoformat.
DATE_PATTERN = r"(?:19[0-9]{2}|[2-8][0-9]{3}|9000)-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
DATE = re.compile(DATE_PATTERN)
# Five years, leap days included.
MAX_DAYS = 5 * 365 + 2
DEFAULT_DAYS = 30
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
INTERVALS = ("day", "week", "month")
# A CSV file's cell separator, by name (a ';' in a query string would need escaping).
SEPARATORS = {"comma": ",", "semicolon": ";"}
DIGITS = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True, slots=True)
class Expect:
    """What a value must be, as a refusal words it: "'limit' must be <text>"."""

    text: str


def _date(raw: object) -> date:
    if isinstance(raw, str) and DATE.fullmatch(raw):
        return date.fromisoformat(raw)  # ValueError for a day the month does not have
    raise ValueError("not a date")


def _digits(raw: object) -> int:
    # Only digits: int() would also take " 10", "+10" and "1_0", which the document's
    # `integer` does not describe.
    if isinstance(raw, str) and DIGITS.fullmatch(raw):
        return int(raw)
    raise ValueError("not a whole number")


def _integral(value: object) -> object:
    # JSON Schema counts 30545.0 as an integer, so the document cannot refuse it: take it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


DateParam = Annotated[
    date,
    Field(json_schema_extra={"pattern": f"^{DATE_PATTERN}$"}),
    BeforeValidator(_date),
    Expect(f"a date YYYY-MM-DD from {FIRST_DATE} to {LAST_DATE}"),
]
Limit = Annotated[
    int,
    Field(ge=1, le=MAX_LIMIT),
    BeforeValidator(_digits),
    Expect(f"a whole number from 1 to {MAX_LIMIT}"),
]
Interval = Annotated[Literal[INTERVALS], Expect(f"one of {', '.join(INTERVALS)}")]
Separator = Annotated[Literal[tuple(SEPARATORS)], Expect(f"one of {', '.join(SEPARATORS)}")]
Count = Annotated[
    int,
    Strict(),
    Field(ge=0, le=MAX_BASELINE),
    BeforeValidator(_integral),
    Expect(f"a whole number from 0 to {MAX_BASELINE}"),
]


class RangeParams(BaseModel):
    """`from` and `to`."""

    # Parameters the endpoint does not take are ignored, as HTTP query strings usually are.
    model_config = ConfigDict(frozen=True, extra="ignore")

    start: DateParam | SkipJsonSchema[None] = Field(
        None,
        alias="from",
        description="first site-local date, inclusive (default: 29 days before `to`)",
    )
    end: DateParam | SkipJsonSchema[None] = Field(
        None,
        alias="to",
        description=(
            "last site-local date, inclusive (default: today); not before `from`, and at "
            f"most {MAX_DAYS} days (5 years) from it"
        ),
    )


class ExportParams(RangeParams):
    """GET .../export.csv."""

    separator: Separator = Field(
        "comma",
        description=(
            "`semicolon`: cells separated by ';', which a spreadsheet whose decimal mark is "
            "',' (set for Vietnamese, as for most of Europe) opens into columns"
        ),
    )


class StatsParams(RangeParams):
    """GET .../stats."""

    interval: Interval = Field("day", description="series step; a week is ISO, Monday to Sunday")


class TopParams(RangeParams):
    """GET .../pages and .../referrers."""

    limit: Limit = Field(DEFAULT_LIMIT, description="how many rows")


class Baseline(BaseModel):
    """PUT .../baseline: what an old counter had reached. Either number may be left out
    (it keeps its value), not both."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra={"minProperties": 1})

    visits: Count | SkipJsonSchema[None] = Field(None, description="visits before this service")
    pageviews: Count | SkipJsonSchema[None] = Field(
        None, description="pageviews before this service"
    )

    @field_validator("visits", "pageviews", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Left out keeps the value; null is not a number (the document says integer).
        if value is None:
            raise ValueError("null")
        return value


Q = TypeVar("Q", bound=BaseModel)


def _expectation(annotation: Any) -> str | None:
    """The Expect inside a field's (possibly optional) Annotated type."""
    for arg in get_args(annotation):
        if isinstance(arg, Expect):
            return arg.text
        found = _expectation(arg)
        if found:
            return found
    return None


def _expected(model: type[BaseModel], key: str) -> str:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            for item in field.metadata:
                if isinstance(item, Expect):
                    return item.text
            return _expectation(field.annotation) or "valid"
    raise LookupError(key)


def parse_query(model: type[Q], args: MultiDict[str, str]) -> Q:
    """The query parameters `model` declares, each given at most once; 400
    `invalid_parameter` naming the first bad one."""
    raw: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        values = args.getlist(key)
        if len(values) > 1:
            raise bad_parameter(key, "must be given once")
        if values:
            raw[key] = values[0]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        key = str(exc.errors()[0]["loc"][0])
        raise bad_parameter(
            key, f"must be {_expected(model, key)}, got {raw[key][:40]!r}"
        ) from None


def parse_body(model: type[Q], fields: dict[str, object]) -> Q:
    """A JSON object's fields as `model` declares them; 400 `invalid_field` naming the
    first bad one, `invalid_json` when none of them is there."""
    declared = list(model.model_fields)
    if not fields:
        raise ApiError(
            400, "invalid_json", f"send a JSON object with {' and/or '.join(map(repr, declared))}"
        )
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        if error["type"] == "extra_forbidden":
            message = f"'{key}' is not a field here: send {' and/or '.join(map(repr, declared))}"
        else:
            message = f"'{key}' must be {_expected(model, key)}"
        raise ApiError(400, "invalid_field", message) from None


def bad_parameter(parameter: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"'{parameter}' {message}")
