"""Evaluations as text an operator reads at 3 a.m.: what was decided, why (or why not), from which
inputs and which rule said what. Used by `scaler why POOL` and `GET /v1/pools/{pool}/why`.

It only formats what the engine stored; it never re-evaluates anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from policies import format_duration

_OUTCOME = {"scale_out": "SCALE OUT", "scale_in": "SCALE IN", "hold": "hold"}


def _number(v: Any) -> str:
    if v is None:
        return "no data"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _when(at: str | None, now: float | None) -> str:
    if at is None:
        return "?"
    if now is None:
        return at
    try:
        t = datetime.fromisoformat(at).timestamp()
    except ValueError:
        return at
    age = now - t
    return f"{at} ({format_duration(age)} ago)" if age >= 0.5 else at


def explain(pool: str, decisions: Iterable[Mapping[str, Any]], now: float | None = None) -> str:
    """Newest first, as the API returns them. Each decision is the API's DecisionOut as a mapping."""
    blocks = [explain_one(pool, d, now) for d in decisions]
    if not blocks:
        return f"{pool}: no evaluation recorded yet\n"
    return "\n".join(blocks)


def explain_one(pool: str, d: Mapping[str, Any], now: float | None = None) -> str:
    outcome = _OUTCOME.get(str(d.get("outcome")), str(d.get("outcome")))
    if d.get("dry_run") and d.get("outcome") != "hold":
        outcome = f"{outcome} (dry-run: not done)"
    size = f"size {d.get('current')}"
    if d.get("desired") != d.get("current"):
        size += f" → {d.get('desired')}"
    lines = [f"{pool}  {_when(d.get('at'), now)}  {outcome}  {size}"]
    lines.append(f"  why:    {d.get('reason', '')}")
    ctx: Mapping[str, Any] = d.get("context") or {}
    if ctx.get("cause"):
        asked = ctx.get("recommended")
        extra = f"; rules recommend size {asked}" if asked not in (None, d.get("current"), d.get("desired")) else ""
        lines.append(f"  cause:  {ctx['cause']}{extra}")
    if ctx.get("bounds"):
        lines.append(f"  bounds: {ctx['bounds']}")
    if ctx.get("warming"):
        lines.append(f"  warm-up: {ctx['warming']} members warming (left out of the inputs)")
    if ctx.get("signals"):
        lines.append("  signals: " + "; ".join(str(s) for s in ctx["signals"]))
    inputs: Mapping[str, Any] = d.get("inputs") or {}
    if inputs:
        lines.append("  inputs: " + ", ".join(f"{k}={_number(v)}" for k, v in inputs.items()))
    verdicts: Sequence[Mapping[str, Any]] = d.get("verdicts") or []
    if verdicts:
        width = max(len(str(v.get("rule", ""))) for v in verdicts)
        for i, v in enumerate(verdicts):
            step = v.get("step") or 0
            asks = f"  (asks {step:+d})" if step else ""
            head = "  rules:  " if i == 0 else "          "
            lines.append(f"{head}{v.get('rule', '')!s:<{width}}  {v.get('verdict', '')!s:<8} "
                         f"{v.get('detail', '')}{asks}")
    if d.get("operation"):
        lines.append(f"  operation: {d['operation']}")
    return "\n".join(lines) + "\n"


__all__ = ["explain", "explain_one"]
