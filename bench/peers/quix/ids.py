"""Ids derived from other ids: a port of orderflow's pipelines/src/ids.rs.

The order saga names an order's one charge with ``derived_uuid("orderflow.payment-id.v1",
[order_id])``, so this peer must compute the very same string: 128-bit FNV-1a over the
domain and the parts (every part but the last prefixed with its UTF-8 length as a
big-endian u64), a final xor-shift/multiply mix, then the UUID version-8 and variant
bits.
"""

_MASK = (1 << 128) - 1
_OFFSET = 0x6C62272E07BB014262B821756295C58D
_PRIME = 0x0000000001000000000000000000013B
_MIX = 0x9E3779B97F4A7C15F39CC0605CEDC835


def derived_uuid(domain: str, parts: list[str]) -> str:
    """The UUID-formatted id that ids.rs `derived_uuid(domain, parts)` gives."""
    h = _OFFSET

    def feed(data: bytes) -> None:
        nonlocal h
        for byte in data:
            h ^= byte
            h = (h * _PRIME) & _MASK

    feed(domain.encode("utf-8"))
    if parts:
        *init, last = parts
        for part in init:
            raw = part.encode("utf-8")
            feed(len(raw).to_bytes(8, "big"))
            feed(raw)
        feed(last.encode("utf-8"))
    h ^= h >> 64
    h = (h * _MIX) & _MASK
    h ^= h >> 67
    h = (h * _MIX) & _MASK
    h ^= h >> 64
    raw = bytearray(h.to_bytes(16, "big"))
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    hx = raw.hex()
    return f"{hx[0:8]}-{hx[8:12]}-{hx[12:16]}-{hx[16:20]}-{hx[20:32]}"


def payment_id_for(order_id: str) -> str:
    """The payment id of an order's one charge (order_saga.rs `payment_id_for`)."""
    return derived_uuid("orderflow.payment-id.v1", [order_id])
