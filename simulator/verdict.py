"""A what-if answer (``rollouts.whatif.WhatIf.as_json``, the API's JSON) as lines for people.

Pure, so the command line (``edgefleet-sim what-if``) and the control plane's
``manage.py what_if`` print the same lines.
"""

from __future__ import annotations

from typing import Any


def lines(answer: dict[str, Any]) -> list[str]:
    out = [f"verdict: {answer['verdict']}: {answer['summary']}"]
    for stage in answer["stages"]:
        head = f"  stage {stage['index']} ({stage['kind']} {stage['value']}{', shadow' if stage['shadow'] else ''})"
        if stage["verdict"] == "not_reached":
            out.append(f"{head}: {stage['devices']} devices, not reached")
            continue
        failing = [g for g in stage["gates"] if g["verdict"] != "pass"]
        gates = "; ".join(
            f"{g['gate']} {g['verdict']} ({_figure(g['value'])} vs {_figure(g['threshold'])})" for g in failing
        )
        out.append(
            f"{head}: {stage['devices']} devices, active {stage['active']}, failed {stage['failed']}, silent "
            f"{stage['silent']}; all active at {_clock(stage['all_active_at_s'])}, judged at "
            f"{_clock(stage['judged_at_s'])}: {stage['verdict']}" + (f" [{gates}]" if gates else "")
        )
    return out


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def _clock(seconds: Any) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    return f"{minutes // 60}:{minutes % 60:02d}"
