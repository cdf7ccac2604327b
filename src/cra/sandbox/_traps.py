"""Reading wasmtime's error text: what a trap or failed call says, without the backtrace."""

from __future__ import annotations

__all__ = ["trap_causes"]


def trap_causes(message: str) -> list[str]:
    """The lines after wasmtime's ``Caused by:``, without their ``0:`` numbering and ``wasm trap:``
    prefix; for a message without causes, its first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "Caused by:" not in lines:
        return lines[:1]
    out = []
    for line in lines[lines.index("Caused by:") + 1 :]:
        head, sep, rest = line.partition(": ")
        text = rest if sep and head.isdigit() else line
        out.append(text.removeprefix("wasm trap: "))
    return out
