"""Turns a backtest `Result` into what people and programs read: the summary as data, the timeline, the
text report and the JSON document. Formatting only: it never runs or changes the simulation and prints
nothing itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from policies import Cause, Outcome, TargetRule, ThresholdRule, Verdict, format_duration
from scaler.simulate.backtest import Happening, Result
from scaler.simulate.recording import format_elapsed, format_time, recorded_sizes

__all__ = ["render_text", "summarize", "timeline", "to_json"]


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def summarize(result: Result) -> dict[str, Any]:
    """The summary block as data (seconds are simulated time: each evaluation counts for `step`)."""
    evs, step = result.evaluations, result.step
    total = len(evs) * step
    sizes = [e.decision.current for e in evs]
    policy = result.policy
    actions = [h for h in result.happenings if h.kind in ("scale_out", "scale_in")]
    outs = [h for h in actions if h.kind == "scale_out"]
    ins = [h for h in actions if h.kind == "scale_in"]
    holds: dict[str, dict[str, float]] = {}
    for e in evs:
        d = e.decision
        if d.outcome is Outcome.HOLD:
            h = holds.setdefault(str(d.cause), {"count": 0, "seconds": 0.0})
            h["count"] += 1
            h["seconds"] += step
    rules: dict[str, dict[str, Any]] = {}
    for i, rule in enumerate(policy.rules):
        verdicts = [e.decision.verdicts[i] for e in evs]
        no_data = sum(step for v in verdicts if v.verdict is Verdict.NO_DATA)
        if isinstance(rule, TargetRule):
            name = policy.input_of(rule)
            above = within = below = 0.0
            for e, v in zip(evs, verdicts, strict=True):
                value = e.decision.inputs.get(name)
                if v.verdict is Verdict.NO_DATA or value is None:
                    continue
                if abs(value / rule.target - 1) <= rule.tolerance + 1e-12:
                    within += step
                elif value > rule.target:
                    above += step
                else:
                    below += step
            rules[rule.name] = {"kind": "target", "condition": f"{rule.input} target {rule.target:g} "
                                f"±{rule.tolerance * 100:g}%", "above_s": above, "within_s": within,
                                "below_s": below, "no_data_s": no_data}
        else:
            held = sum(step for v in verdicts if v.verdict in (Verdict.FIRE, Verdict.PENDING))
            fired = sum(step for v in verdicts if v.verdict is Verdict.FIRE)
            condition = rule.condition() if isinstance(rule, ThresholdRule) else f"alarm {rule.alarm} firing"
            rules[rule.name] = {"kind": "threshold" if isinstance(rule, ThresholdRule) else "alarm",
                                "condition": condition, "held_s": held, "fired_s": fired, "no_data_s": no_data}
    missing = {name: sum(step for e in evs if e.decision.inputs.get(name) is None)
               for name in policy.inputs if not policy.inputs[name].is_alarm}
    recorded = None
    if result.recording.sizes:
        rec = recorded_sizes(result.recording.sizes, [e.t for e in evs])
        if rec:
            recorded = {"mean": sum(rec) / len(rec), "member_seconds": sum(rec) * step, "min": min(rec),
                        "max": max(rec)}
    return {
        "pool": policy.name,
        "start": result.start,
        "end": result.end,
        "step_s": step,
        "duration_s": total,
        "evaluations": len(evs),
        "boot_delay_s": result.options.boot_delay,
        "drain_delay_s": result.options.drain_delay,
        "scaled_with_size": list(result.scaled),
        "size": {
            "start": result.start_size,
            "end": result.end_size,
            "min": min(sizes, default=result.start_size),
            "max": max(sizes, default=result.start_size),
            "mean": sum(sizes) / len(sizes) if sizes else float(result.start_size),
            "member_seconds": sum(sizes) * step,
        },
        "recorded_size": recorded,
        "actions": {
            "scale_out": len(outs),
            "scale_in": len(ins),
            "members_added": sum(h.size - (h.before or 0) for h in outs),
            "members_removed": sum((h.before or 0) - h.size for h in ins),
            "bound_corrections": sum(1 for h in actions if h.cause in (Cause.BELOW_MIN, Cause.ABOVE_MAX)),
            "by_rule": dict(Counter(h.rule for h in actions if h.rule)),
        },
        "time_at_max_s": sum(step for e in evs
                             if e.decision.bounds is not None and e.decision.current >= e.decision.bounds.max),
        "time_at_min_s": sum(step for e in evs
                             if e.decision.bounds is not None and e.decision.current <= e.decision.bounds.min),
        "time_busy_s": sum(step for e in evs if e.booting or e.draining),
        "rules": rules,
        "no_data_s": missing,
        "holds": holds,
        "pending": result.pending,
    }


def timeline(result: Result, every: bool) -> list[Happening]:
    """Actions and completions, plus holds: every evaluation with `every`, else when the cause changes."""
    lines: list[Happening] = []
    acts = result.happenings        # in the order they happened
    j = 0
    last_cause: str | None = None
    for k, e in enumerate(result.evaluations):
        while j < len(acts) and acts[j].seq <= k:
            lines.append(acts[j])
            j += 1
        d = e.decision
        if d.acts:
            lines.append(acts[j])   # the action this evaluation decided
            j += 1
            last_cause = None
            continue
        cause = str(d.cause)
        if every or cause != last_cause:
            lines.append(Happening(e.t, "hold", d.current, d.reason, cause, d.rule))
        last_cause = cause
    lines += acts[j:]
    return lines


def _line(h: Happening, start: float) -> str:
    if h.kind in ("scale_out", "scale_in"):
        size = f"{h.before} → {h.size}"
        text = h.text if h.cause == Cause.RULE else f"[{h.cause}] {h.text}"
    elif h.kind == "hold":
        size, text = str(h.size), f"[{h.cause}] {h.text}"
    else:
        size, text = str(h.size), h.text
    return f"{format_elapsed(h.t - start)}  {h.kind:<9}  {size:<6} {text}"


def render_text(result: Result, summary: Mapping[str, Any], *, every: bool = False,
                policy_path: str = "") -> list[str]:
    """The timeline and the summary block, as lines."""
    s = summary
    out = [f"simulating pool {result.policy.name}" + (f" of {policy_path}" if policy_path else "")
           + f" on {result.recording.source}",
           f"  {format_time(result.start)} → {format_time(result.end)} "
           f"({format_duration(result.end - result.start)}), "
           f"evaluating every {format_duration(result.step)}; boot {format_duration(result.options.boot_delay)}, "
           f"drain {format_duration(result.options.drain_delay)}; start size {result.start_size}"]
    if result.dry_run:
        out.append("  the policy is dry_run: simulated as if it acted")
    if result.scaled:
        out.append(f"  {', '.join(result.scaled)} rescaled by recorded size / simulated size "
                   "(--no-scale-with-size to replay as recorded)")
    elif result.recording.sizes:
        out.append("  replayed as recorded (no rescaling by size)")
    out.append("")
    out += [_line(h, result.start) for h in timeline(result, every)]
    total = s["duration_s"] or 1.0
    size, act = s["size"], s["actions"]
    out += ["", "summary",
            f"  period          {format_duration(result.end - result.start)}, {s['evaluations']} evaluations "
            f"every {format_duration(s['step_s'])}",
            f"  size            start {size['start']}, end {size['end']}, min {size['min']}, max {size['max']}, "
            f"mean {size['mean']:.2f}; {size['member_seconds'] / 3600:.2f} member-hours"]
    rec = s["recorded_size"]
    if rec:
        out.append(f"  recorded size   min {rec['min']:g}, max {rec['max']:g}, mean {rec['mean']:.2f}; "
                   f"{rec['member_seconds'] / 3600:.2f} member-hours")
    out.append(f"  actions         {act['scale_out']} scale-out"
               + (f" (+{act['members_added']})" if act["members_added"] else "")
               + f", {act['scale_in']} scale-in" + (f" (-{act['members_removed']})" if act["members_removed"] else "")
               + (f", {act['bound_corrections']} of them bound corrections"
                                                  if act["bound_corrections"] else "")
               + (" — " + ", ".join(f"{r}: {n}" for r, n in act["by_rule"].items()) if act["by_rule"] else ""))
    out.append(f"  at max          {format_duration(s['time_at_max_s'])} ({_pct(s['time_at_max_s'], total)}); "
               f"at min {format_duration(s['time_at_min_s'])} ({_pct(s['time_at_min_s'], total)}); "
               f"an action in progress {format_duration(s['time_busy_s'])} ({_pct(s['time_busy_s'], total)})")
    for i, (name, r) in enumerate(s["rules"].items()):
        head = "  rules           " if i == 0 else "                  "
        if r["kind"] == "target":
            text = (f"{r['condition']}: above {format_duration(r['above_s'])}, within "
                    f"{format_duration(r['within_s'])}, below {format_duration(r['below_s'])}")
        else:
            text = (f"{r['condition']} held {format_duration(r['held_s'])} ({_pct(r['held_s'], total)}), "
                    f"fired {format_duration(r['fired_s'])}")
        if r["no_data_s"]:
            text += f", no data {format_duration(r['no_data_s'])}"
        out.append(f"{head}{name}: {text}")
    holds = sorted(s["holds"].items(), key=lambda kv: -kv[1]["seconds"])
    out.append("  holds by cause  " + ", ".join(f"{c} {format_duration(h['seconds'])} ({h['count']:g})"
                                               for c, h in holds))
    missing = {k: v for k, v in s["no_data_s"].items() if v}
    if missing:
        out.append("  no data         " + ", ".join(f"{k} {format_duration(v)}" for k, v in missing.items()))
    if s["pending"]:
        out.append(f"  at the end      {s['pending']}")
    return out


def to_json(result: Result, summary: Mapping[str, Any], *, every: bool = False) -> dict[str, Any]:
    """Machine-readable output: the timeline (as printed) and the summary; with `every`, every
    evaluation with its inputs and verdicts too."""
    def item(h: Happening) -> dict[str, Any]:
        return {"t": h.t, "at": format_elapsed(h.t - result.start), "kind": h.kind, "size": h.size, "before": h.before,
                "cause": h.cause or None, "rule": h.rule, "text": h.text}

    doc: dict[str, Any] = {"pool": result.policy.name, "source": result.recording.source,
                           "timeline": [item(h) for h in timeline(result, every)], "summary": dict(summary)}
    if every:
        doc["evaluations"] = [
            {"t": e.t, "at": format_elapsed(e.t - result.start), "outcome": str(e.decision.outcome),
             "current": e.decision.current, "desired": e.decision.desired, "recommended": e.decision.recommended,
             "cause": str(e.decision.cause), "reason": e.decision.reason, "bounds": str(e.decision.bounds),
             "in_service": e.in_service, "booting": e.booting, "draining": e.draining,
             "inputs": dict(e.decision.inputs),
             "verdicts": [{"rule": v.rule, "verdict": str(v.verdict), "desired": v.desired, "detail": v.detail}
                          for v in e.decision.verdicts]}
            for e in result.evaluations]
    return doc
