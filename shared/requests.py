"""Request bodies decoded exactly: JSON numbers keep every digit they were sent with.

Litestar decodes a JSON body into plain Python values before converting it to the handler's
struct, and plain decoding turns `50.0000000000000001` into the float 50.0: the extra digits
(which must make such an amount a 422) would be gone before any validation ran. Every service's
requests therefore decode JSON floats straight from their text into `Decimal`, and fields typed
`PlainDecimal` accept only a JSON number or a plain ASCII decimal string ("５０", "1_000" and
" 50" are refused; Python's `Decimal()` would take them).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import PathParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.serialization import default_deserializer
from litestar.types import Empty
from litestar.typing import FieldDefinition

from shared.errors import ProblemError
from shared.money import MoneyError, PlainDecimal, plain_decimal

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

T = TypeVar("T")

# Free text that is stored (names, ids, payment method tokens): no control characters, and none of
# them the NUL a Postgres text column refuses (a 500 if it got that far).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


def text(max_length: int, *, min_length: int = 1) -> Any:
    """A stored string field: bounded, without control characters."""
    return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length, pattern=NO_CONTROL_CHARACTERS)]


# Ids in paths, bounded by their columns (an id past them is refused as a 4xx, never sent to Postgres).
MAX_ID = 2**31 - 1  # Postgres integer
Id = Annotated[int, PathParameter(ge=1, le=MAX_ID)]  # integer / serial columns (barber ids, connections)
BigId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]  # bigint columns


def _hook(target: type, value: object) -> Any:
    if isinstance(target, type) and issubclass(target, PlainDecimal):
        try:
            return plain_decimal(value)
        except MoneyError as exc:
            raise ValueError(str(exc)) from None
    return default_deserializer(target, value)


_decoder = msgspec.json.Decoder(dec_hook=_hook, float_hook=Decimal)

# For `Litestar(type_decoders=...)`: converting decoded values into handler structs.
TYPE_DECODERS = [(lambda t: isinstance(t, type) and issubclass(t, PlainDecimal), lambda t, v: _hook(t, v))]


def decode_body(body: bytes, struct: type[T]) -> T:
    """A body into `struct` with the same exact rules (for handlers that read the body themselves)."""
    return msgspec.convert(_decoder.decode(body), struct, strict=False, dec_hook=_hook)


class ExactJSONRequest(Request):
    """Litestar's Request, with `json()` keeping JSON numbers exact (see the module docstring)."""

    async def json(self) -> Any:
        if self._json is Empty:
            if (cached := self._connection_state.json) is not Empty:
                self._json = cached
            else:
                body = await self.body()
                try:
                    decoded = _decoder.decode(body or b"null")
                except msgspec.DecodeError as exc:  # Litestar answers it 400
                    raise SerializationException(str(exc)) from exc
                except RecursionError:  # [[[[...]]]] ten thousand deep: malformed, not a server fault
                    raise SerializationException("JSON nested too deeply") from None
                self._json = self._connection_state.json = decoded
        return self._json


class PlainDecimalSchema(OpenAPISchemaPlugin):
    """How `PlainDecimal` fields read in the OpenAPI document: a number, or a decimal string."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return isinstance(value, type) and issubclass(value, PlainDecimal)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        return Schema(
            one_of=[Schema(type=OpenAPIType.NUMBER),
                    Schema(type=OpenAPIType.STRING, pattern=r"^-?[0-9]+(\.[0-9]+)?$")],
            description="A decimal: a JSON number, or a string of ASCII digits with an optional '.' "
                        '("50", 50.00, "50.00"); never exponent notation in strings.',
            examples=["50.00"],
        )


async def optional_body(request: Request, struct: type[T]) -> T:
    """A body that may be absent (then all defaults), decoded exactly and with the usual errors."""
    raw = await request.body()
    if not raw.strip():
        return struct()
    try:
        return decode_body(raw, struct)
    except msgspec.ValidationError as exc:
        raise ProblemError(422, "validation_error", str(exc)) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProblemError(400, "invalid_json", f"malformed JSON body: {exc}") from None
