"""A request class whose JSON is strict: UTF-8, no NaN/Infinity, bounded numbers and nesting."""

from typing import Any

import anyio.to_thread
from quart import Request

from quart_iot.documents import InvalidJson, parse_json
from quart_iot.errors import InvalidBody, UnsupportedMediaType

# Larger bodies are parsed in a worker thread: the checks after the C decoder (nesting depth,
# lone surrogates) walk the whole value in Python, which would hold up every other request.
PARSE_INLINE_BYTES = 64 * 1024


class StrictJSONRequest(Request):
    """`get_json` (which quart-schema's validate_request calls) answers 415/400 as the contract."""

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            raise UnsupportedMediaType
        data = await self.get_data(cache=cache, as_text=False)
        raw = data.encode() if isinstance(data, str) else data
        try:
            if len(raw) <= PARSE_INLINE_BYTES:
                return parse_json(raw)
            return await anyio.to_thread.run_sync(parse_json, raw)
        except InvalidJson as error:
            raise InvalidBody(f"The request body is not valid JSON: {error}") from None
