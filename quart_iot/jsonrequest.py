"""A request class whose JSON is strict: UTF-8, no NaN/Infinity, bounded numbers and nesting."""

from typing import Any

from quart import Request

from quart_iot.documents import InvalidJson, parse_json
from quart_iot.errors import InvalidBody, UnsupportedMediaType


class StrictJSONRequest(Request):
    """`get_json` (which quart-schema's validate_request calls) answers 415/400 as the contract."""

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            raise UnsupportedMediaType
        data = await self.get_data(cache=cache, as_text=False)
        try:
            return parse_json(data.encode() if isinstance(data, str) else data)
        except InvalidJson as error:
            raise InvalidBody(f"The request body is not valid JSON: {error}") from None
