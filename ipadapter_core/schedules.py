"""Per-latent weight factors, for batches that are frames of an animation.

Apply IP-Adapter multiplies latent i's weight by value i (the last repeating), so a schedule
fades the reference in or out across the frames.
"""

from __future__ import annotations

import math

from .errors import IPAdapterError

SCHEDULE_METHODS = ("linear", "ease in", "ease out", "ease in-out")

EASINGS = {
    "linear": lambda t: t,
    "ease in": lambda t: t * t,
    "ease out": lambda t: 1 - (1 - t) * (1 - t),
    "ease in-out": lambda t: t * t * (3 - 2 * t),  # smoothstep: flat at both ends
}


def weight_schedule(frames: int, start: float, end: float, method: str = "linear") -> tuple[float, ...]:
    """`frames` values from `start` (first) to `end` (last), both exact, eased by `method`."""
    if method not in EASINGS:
        raise IPAdapterError(f"Unknown method {method!r}; choose one of {', '.join(SCHEDULE_METHODS)}.")
    if frames < 1:
        raise IPAdapterError(f"frames is {frames}; it must be at least 1 (one value per latent).")
    ease = EASINGS[method]
    # start * (1 - e) + end * e, not start + (end - start) * e: the endpoints come out exact.
    return tuple(start * (1 - e) + end * e for e in (ease(i / max(frames - 1, 1)) for i in range(frames)))


def parse_schedule(text: str) -> tuple[float, ...]:
    """'1, 0.8, 0.5' -> (1.0, 0.8, 0.5), used as-is; blank entries (a trailing comma) are ignored."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise IPAdapterError(f"custom has no values ({text!r}); write numbers separated by commas, like '1, 0.8, 0.5', or leave it empty.")
    values = []
    for index, part in enumerate(parts, start=1):
        try:
            value = float(part)
        except ValueError:
            raise IPAdapterError(
                f"custom value {index} ({part!r}) is not a number; write numbers separated by commas, like '1, 0.8, 0.5'."
            ) from None
        if not math.isfinite(value):
            raise IPAdapterError(f"custom value {index} is {part!r}; every value must be a finite number, like 0.5.")
        values.append(value)
    return tuple(values)


def format_schedule(values: tuple[float, ...]) -> str:
    """Readable, and valid input for `parse_schedule` (so it can be pasted back and edited)."""
    return ", ".join(f"{value:.4g}" for value in values)
