"""``edgefleet rollout start|status`` and ``edgefleet rollback site``: staged rollouts from CI and a terminal.

A REST client of ``/api/v1/rollouts/`` and ``/api/v1/sites/{slug}/rollback/``
(docs/rollouts.md), Django-free like the rest of the command. ``status
--wait`` follows a rollout with a progress bar until it ends and exits with
what happened, so a CI job can gate on it (``registry.client``'s codes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from registry.client import (
    EXIT_ABORTED,
    EXIT_HALTED,
    EXIT_OK,
    EXIT_REVERTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    call,
    err,
    out,
)

rollout = typer.Typer(no_args_is_help=True, help="Staged rollouts of a model version.")
rollback = typer.Typer(no_args_is_help=True, help="Send devices back to their last known-good version.")

Server = Annotated[str, typer.Option(envvar="EDGEFLEET_SERVER", help="Control plane base URL.")]
Token = Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token (rollout scope).")]

# What each final state means to CI.
FINAL = {"completed": EXIT_OK, "halted": EXIT_HALTED, "reverted": EXIT_REVERTED, "aborted": EXIT_ABORTED}


def target_of(
    sites: list[str] | None, labels: list[str] | None, hardware: list[str] | None, running_model: str | None
) -> dict[str, Any]:
    """The rollout target from the command line's options; every option given narrows it."""
    target: dict[str, Any] = {}
    if sites:
        target["sites"] = sites
    if hardware:
        target["hardware_profiles"] = hardware
    if labels:
        pairs = [label.partition("=") for label in labels]
        if any(not key or not sep for key, sep, _ in pairs):
            err.print("[red]--label takes key=value[/red]")
            raise typer.Exit(EXIT_USAGE)
        target["labels"] = {key: value for key, _, value in pairs}
    if running_model:
        target["running_model"] = running_model
    return target


def start_rollout(
    server: str, token: str, model: str, version: str, template: str, target: dict[str, Any], reason: str = ""
) -> dict[str, Any]:
    body = {"model": model, "version": version, "template": template, "target": target, "reason": reason}
    answer: dict[str, Any] = call(server, token, "POST", "/api/v1/rollouts/", body)
    stages = answer.get("plan", {}).get("stages", []) if isinstance(answer.get("plan"), dict) else []
    err.print(f"[green]rollout {answer.get('id')}[/green] of {model} {version}: {len(stages) or '?'} stages")
    return answer


@rollout.command("start")
def start(
    model: Annotated[str, typer.Argument(help="Registry model name.")],
    version: Annotated[str, typer.Argument(help="The published version to roll out.")],
    template: Annotated[str, typer.Option(help="A rollout template's name: its plan and gates.")],
    server: Server,
    token: Token,
    site: Annotated[list[str] | None, typer.Option(help="Target site slug; repeat.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="Target device label key=value; repeat.")] = None,
    hardware: Annotated[list[str] | None, typer.Option(help="Target hardware profile; repeat.")] = None,
    running_model: Annotated[
        str | None, typer.Option(help="Target the devices running this model (default: MODEL).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")] = "",
) -> None:
    """Start a rollout from a template; prints it as JSON. Without a target option: every device running MODEL."""
    target = target_of(site, label, hardware, running_model) or {"running_model": model}
    out.print_json(data=start_rollout(server, token, model, version, template, target, reason))


def follow(server: str, token: str, rollout_id: int, *, timeout: float, interval: float) -> dict[str, Any]:
    """Poll a rollout until it ends or ``timeout`` passes, drawing stage and device progress."""
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
    ) as progress:
        stages = progress.add_task("stages", total=None)
        devices = progress.add_task("devices active", total=None)
        while True:
            answer: dict[str, Any] = call(server, token, "GET", f"/api/v1/rollouts/{rollout_id}/")
            counts = answer.get("device_states") or {}
            done = sum(1 for stage in answer.get("stages") or [] if stage.get("state") == "passed")
            progress.update(stages, total=len(answer.get("stages") or []) or None, completed=done)
            progress.update(devices, total=sum(counts.values()) or None, completed=counts.get("active", 0))
            progress.update(stages, description=f"stages ({answer.get('state')})")
            if answer.get("state") in FINAL or time.monotonic() >= deadline:
                return answer
            time.sleep(interval)


@rollout.command("status")
def status(
    rollout_id: Annotated[int, typer.Argument(help="The rollout's id.")],
    server: Server,
    token: Token,
    wait: Annotated[bool, typer.Option(help="Follow it until it completes, halts, reverts or is aborted.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 3600.0,
    interval: Annotated[float, typer.Option(help="With --wait: seconds between polls.")] = 5.0,
) -> None:
    """Print a rollout's state (stages, gates, devices by state) as JSON; with --wait, exit with how it ended."""
    if wait:
        answer = follow(server, token, rollout_id, timeout=timeout, interval=interval)
    else:
        answer = call(server, token, "GET", f"/api/v1/rollouts/{rollout_id}/")
    out.print_json(data=answer)
    state = answer.get("state")
    message = f"rollout {rollout_id}: {state}" + (f" ({answer['halt_reason']})" if answer.get("halt_reason") else "")
    err.print(message)
    if not wait:
        return
    code = FINAL.get(str(state), EXIT_TIMEOUT)
    raise typer.Exit(code)


Yes = Annotated[bool, typer.Option("--yes", help="Do it without asking after the preview.")]
DryRun = Annotated[bool, typer.Option(help="Show what it would do, change nothing.")]


def _moves(what: str, to: Any, devices: Any, offline: Any) -> str:
    return f"{what}: back to {to} on {devices} devices ({offline} offline, converging when they return)"


def _preview_then_roll_back(
    server: str,
    token: str,
    path: str,
    lines: Callable[[dict[str, Any]], list[str]],
    question: str,
    *,
    reason: str,
    yes: bool,
    dry_run: bool,
) -> None:
    """Show the plan the API previews (GET), then, unless a dry run or declined, do it (POST)."""
    preview: dict[str, Any] = call(server, token, "GET", path)
    for line in lines(preview):
        err.print(line)
    if preview.get("stops_rollouts"):
        err.print(f"stops rollouts {', '.join(str(r) for r in preview['stops_rollouts'])}")
    if dry_run:
        out.print_json(data=preview)
        return
    if not yes and not typer.confirm(question, err=True):
        raise typer.Exit(EXIT_USAGE)
    out.print_json(data=call(server, token, "POST", path, {"reason": reason}))


@rollback.command("site")
def rollback_site(
    slug: Annotated[str, typer.Argument(help="The site's slug.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")],
    server: Server,
    token: Token,
    yes: Yes = False,
    dry_run: DryRun = False,
) -> None:
    """Return every device of a site to the site's last known-good version; shows the plan first."""
    _preview_then_roll_back(
        server,
        token,
        f"/api/v1/sites/{slug}/rollback/",
        lambda plan: [
            _moves(m.get("model"), m.get("version"), m.get("devices"), m.get("offline_devices"))
            for m in plan.get("models") or []
        ],
        f"Roll back site {slug}?",
        reason=reason,
        yes=yes,
        dry_run=dry_run,
    )


@rollback.command("version")
def rollback_version(
    model: Annotated[str, typer.Argument(help="Registry model name.")],
    version: Annotated[str, typer.Argument(help="The version to take back fleet-wide.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")],
    server: Server,
    token: Token,
    yes: Yes = False,
    dry_run: DryRun = False,
) -> None:
    """Emergency: every device sent VERSION goes back to the version before it; its rollouts stop; it is deprecated."""
    _preview_then_roll_back(
        server,
        token,
        f"/api/v1/models/{model}/versions/{version}/rollback/",
        lambda plan: [
            _moves(f"{model} {version}", plan.get("to_version"), plan.get("devices"), plan.get("offline_devices"))
        ],
        f"Roll back {model} {version} across the fleet?",
        reason=reason,
        yes=yes,
        dry_run=dry_run,
    )
