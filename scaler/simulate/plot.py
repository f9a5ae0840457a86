"""Draws a backtest `Result` as a PNG: one panel per input with its thresholds and targets, then the
size. It only draws, with matplotlib's Agg canvas: no pyplot, no display, no global matplotlib state,
and no file but the one it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from policies import Input, TargetRule, ThresholdRule, format_duration
from scaler.simulate.backtest import Result
from scaler.simulate.recording import format_time

__all__ = ["plot"]


def plot(result: Result, path: Path, *, title: str = "") -> None:
    """A PNG: one panel per input (what rules read, with thresholds and targets), then the size.
    Matplotlib's Agg canvas directly (no pyplot, no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    policy, start = result.policy, result.start
    names = list(policy.inputs)
    fig = Figure(figsize=(14, 2.6 * (len(names) + 1) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names) + 1, 1, sharex=True,
                        gridspec_kw={"height_ratios": [1.0] * len(names) + [1.3]})
    ticks = [(e.t - start) / 60 for e in result.evaluations]

    def gaps(values: Sequence[float | None]) -> list[float]:
        return [math.nan if v is None else v for v in values]

    for ax, name in zip(axes[:-1], names, strict=True):
        inp: Input = policy.inputs[name]
        read = gaps([e.decision.inputs.get(name) for e in result.evaluations])
        if inp.is_alarm:
            ax.step(ticks, read, where="post", color="tab:purple", label=f"{name} (alarm {inp.alarm})")
            ax.set_ylim(-0.1, 1.2)
            ax.set_yticks([0, 1], ["resolved", "firing"])
        else:
            if result.scaled and name in result.scaled:
                raw = [p for p in result.recording.points if p.input == name]
                ax.plot([(p.t - start) / 60 for p in raw], gaps([p.value for p in raw]), color="0.7", lw=1,
                        label=f"{name} as recorded")
            ax.plot(ticks, read, color="tab:blue", lw=1.5, label=f"{name} as the rules read it ({inp.describe()})")
        for rule in policy.rules:
            if policy.input_of(rule) != name:
                continue
            if isinstance(rule, ThresholdRule):
                grows = rule.adjust.exact or rule.adjust.sign > 0
                value = next(v for v in (rule.above, rule.below, rule.at_least, rule.at_most) if v is not None)
                ax.axhline(value, ls="--", lw=1, color="tab:red" if grows else "tab:green",
                           label=f"{rule.name}: {rule.condition()}" + (f" for {format_duration(rule.for_s)}"
                                                                       if rule.for_s else ""))
            elif isinstance(rule, TargetRule):
                ax.axhline(rule.target, ls="--", lw=1, color="tab:orange", label=f"{rule.name}: target "
                                                                                 f"{rule.target:g}")
                ax.axhspan(rule.target * (1 - rule.tolerance), rule.target * (1 + rule.tolerance),
                           color="tab:orange", alpha=0.12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    sizes = [e.decision.current for e in result.evaluations]
    ax.step(ticks, sizes, where="post", color="black", lw=2, label="simulated size")
    ax.step(ticks, [e.decision.recommended for e in result.evaluations], where="post", color="tab:blue", lw=1,
            ls=":", label="recommended by the rules")
    ax.step(ticks, [e.decision.bounds.max if e.decision.bounds else math.nan for e in result.evaluations],
            where="post", color="tab:red", lw=0.8, alpha=0.6, label="max")
    ax.step(ticks, [e.decision.bounds.min if e.decision.bounds else math.nan for e in result.evaluations],
            where="post", color="tab:green", lw=0.8, alpha=0.6, label="min")
    if result.recording.sizes:
        ax.step([(t - start) / 60 for t, _ in result.recording.sizes], [v for _, v in result.recording.sizes],
                where="post", color="0.6", lw=1, ls="--", label="recorded size")
    outs = [h for h in result.happenings if h.kind == "scale_out"]
    ins = [h for h in result.happenings if h.kind == "scale_in"]
    if outs:
        ax.scatter([(h.t - start) / 60 for h in outs], [h.size for h in outs], marker="^", s=60,
                   color="tab:red", zorder=3, label="scale-out decided")
    if ins:
        ax.scatter([(h.t - start) / 60 for h in ins], [h.size for h in ins], marker="v", s=60,
                   color="tab:green", zorder=3, label="scale-in decided")
    for e0, e1 in zip(result.evaluations, result.evaluations[1:], strict=False):
        if e0.booting or e0.draining:
            ax.axvspan((e0.t - start) / 60, (e1.t - start) / 60, color="tab:gray", alpha=0.12, lw=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("members")
    ax.set_xlabel(f"minutes since {format_time(start)} (shaded: an action in progress)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(title or f"pool {policy.name}: simulated on {result.recording.source}")
    fig.savefig(path, dpi=100)
