"""The shapes of the identifiers in URLs, published in the OpenAPI document and checked in
full by the store (`quart_iot.store.records`): one definition for both."""

MAC_PATTERN = r"[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5}"
# `<ns since the epoch, 19 digits>-<8 hex>`: ids sort in time order as strings.
VERSION_PATTERN = r"[0-9]{19}-[0-9a-f]{8}"
