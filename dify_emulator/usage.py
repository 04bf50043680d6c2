"""`metadata.usage` of message_end and blocking bodies, with Dify's string prices."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

PROMPT_UNIT_PRICE = Decimal("0.001")
COMPLETION_UNIT_PRICE = Decimal("0.002")
PRICE_UNIT = Decimal("0.001")
_QUANTUM = Decimal("0.0000001")


def _price(tokens: int, unit_price: Decimal) -> Decimal:
    return (tokens * unit_price * PRICE_UNIT).quantize(_QUANTUM, rounding=ROUND_HALF_UP)


def compute_usage(
    prompt_tokens: int,
    completion_tokens: int,
    latency: float,
    *,
    timing: tuple[float, float] | None = None,
    override: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Dify's LLMUsage dict; `timing` = (time_to_first_token, time_to_generate) where the app reports them."""
    prompt_price = _price(prompt_tokens, PROMPT_UNIT_PRICE)
    completion_price = _price(completion_tokens, COMPLETION_UNIT_PRICE)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "prompt_unit_price": str(PROMPT_UNIT_PRICE),
        "prompt_price_unit": str(PRICE_UNIT),
        "prompt_price": str(prompt_price),
        "completion_tokens": completion_tokens,
        "completion_unit_price": str(COMPLETION_UNIT_PRICE),
        "completion_price_unit": str(PRICE_UNIT),
        "completion_price": str(completion_price),
        "total_tokens": prompt_tokens + completion_tokens,
        "total_price": str(prompt_price + completion_price),
        "currency": "USD",
        "latency": round(latency, 6),
    }
    if timing is not None:
        usage["time_to_first_token"] = round(timing[0], 6)
        usage["time_to_generate"] = round(timing[1], 6)
    if override:
        usage.update(override)
    return usage
