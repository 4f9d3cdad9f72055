"""``edgefleet-agent``: enroll a device, run the agent, show its state.

Each failure prints one line on stderr and exits with its own code (see
``Exit`` and docs/agent.md), so provisioning scripts can tell a spent token
from a server that is down. The device secret is never printed.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from agent import __version__, outbox
from agent import config as agent_config
from agent.kernel import logs, protocol
from agent.lock import DataDirBusy, DataDirLock

log = logging.getLogger("agent")


class Exit(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG_INVALID = 3
    CONFIG_EXISTS = 4
    UNREACHABLE = 5
    TOKEN_UNKNOWN = 10
    TOKEN_USED = 11
    TOKEN_EXPIRED = 12
    WRONG_SITE = 13
    NAME_TAKEN = 14
    REQUEST_REJECTED = 15
    SERVER_ERROR = 16
    RATE_LIMITED = 17
    WRITE_FAILED = 18
    TRY_LATER = 19
    DATA_DIR_IN_USE = 20


# The enrollment API's error codes (fleet/services.py EnrollmentError).
_ENROLL_ERRORS = {
    "unknown_token": Exit.TOKEN_UNKNOWN,
    "token_used": Exit.TOKEN_USED,
    "token_expired": Exit.TOKEN_EXPIRED,
    "wrong_site": Exit.WRONG_SITE,
    "name_taken": Exit.NAME_TAKEN,
}

app = typer.Typer(
    name="edgefleet-agent",
    help="The edgefleet on-device agent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="EDGEFLEET_AGENT_CONFIG", help="Path of agent.toml.", dir_okay=False),
]


def fail(code: Exit, message: str) -> NoReturn:
    typer.echo(f"edgefleet-agent: {message}", err=True)
    raise typer.Exit(int(code))


def _load(path: Path) -> agent_config.AgentConfig:
    try:
        return agent_config.load(path)
    except agent_config.ConfigError as exc:
        fail(Exit.CONFIG_INVALID, str(exc))


def _lock(data_dir: Path, unwritable: Exit) -> DataDirLock:
    """The data directory's lock, held; a refusal when another process holds it."""
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirBusy as exc:
        fail(Exit.DATA_DIR_IN_USE, str(exc))
    except OSError as exc:
        fail(unwritable, f"cannot lock {lock.path}: {exc.strerror}")
    return lock


# --- enroll ----------------------------------------------------------------------


def _post_json(url: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the caller
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = response.status, response.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(1024 * 1024)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _rejection(status: int, document: Any) -> tuple[Exit, str]:
    if isinstance(document, dict) and document.get("code") in _ENROLL_ERRORS:
        return _ENROLL_ERRORS[document["code"]], str(document.get("detail", document["code"]))
    if status == 429:
        return Exit.RATE_LIMITED, "too many enrollment attempts; wait a minute and retry"
    if status == 503:
        detail = document.get("detail") if isinstance(document, dict) else None
        return Exit.TRY_LATER, str(detail or "the server is unavailable (HTTP 503); retry later")
    if 400 <= status < 500:
        # The API's error shape, {code, detail, fields?} (docs/api.md): the first field at fault says most.
        fields = document.get("fields") if isinstance(document, dict) else None
        if isinstance(fields, dict) and fields:
            field, problem = next(iter(fields.items()))
            detail = problem[0] if isinstance(problem, list) and problem else problem
            return Exit.REQUEST_REJECTED, f"the server rejected the request (HTTP {status}): {field}: {detail}"
        if isinstance(document, dict) and document.get("detail"):
            return Exit.REQUEST_REJECTED, f"the server rejected the request (HTTP {status}): {document['detail']}"
        return Exit.REQUEST_REJECTED, f"the server rejected the request (HTTP {status})"
    return Exit.SERVER_ERROR, f"the server failed (HTTP {status}); retry later"


@app.command()
def enroll(
    server: Annotated[str, typer.Option(help="Control plane URL, e.g. https://fleet.example.com.")],
    token: Annotated[str, typer.Option(envvar="EDGEFLEET_ENROLL_TOKEN", help="One-time enrollment token.")],
    name: Annotated[str, typer.Option(help="Device name, unique within its site.")],
    config: ConfigOption = agent_config.DEFAULT_CONFIG_PATH,
    site: Annotated[str, typer.Option(help="Site slug the device expects to join (checked by the server).")] = "",
    hardware_profile: Annotated[str, typer.Option(help="Hardware profile, e.g. jetson-orin.")] = "",
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the agent keeps its state (default: beside the config).")
    ] = None,
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE device label; repeatable.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing config file.")] = False,
    timeout: Annotated[float, typer.Option(help="HTTP timeout in seconds.")] = 15.0,
    retry_for: Annotated[
        float, typer.Option(help="Keep retrying an unreachable, busy or rate-limiting server for this many seconds.")
    ] = 0.0,
) -> None:
    """Spend an enrollment token on a device identity and write the config file (mode 0600)."""
    try:
        server = agent_config.http_url(server)
    except ValueError as exc:
        fail(Exit.USAGE, f"--server: {exc}")
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(Exit.USAGE, f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    if config.exists() and not force:
        fail(Exit.CONFIG_EXISTS, f"{config} exists (already enrolled?); pass --force to replace it")
    data_dir = (data_dir or config.parent / "data").absolute()
    # Check we can write before spending the one-time token.
    for directory in (config.parent, data_dir):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            fail(Exit.WRITE_FAILED, f"cannot create {directory}: {exc.strerror}")
        if not os.access(directory, os.W_OK):
            fail(Exit.WRITE_FAILED, f"{directory} is not writable")
    # An agent running on this data dir would keep its old identity while the trust
    # store changes under it: refuse before the token is spent.
    data_lock = _lock(data_dir, Exit.WRITE_FAILED)

    body: dict[str, Any] = {"token": token, "name": name, "agent_version": __version__}
    if site:
        body["site"] = site
    if hardware_profile:
        body["hardware_profile"] = hardware_profile
    if labels:
        body["labels"] = labels
    deadline = time.monotonic() + retry_for
    delay = 1.0
    while True:
        try:
            status, document = _post_json(f"{server}/api/v1/enroll", body, timeout)
        except (urllib.error.URLError, OSError) as exc:
            code, message = Exit.UNREACHABLE, f"cannot reach {server}: {getattr(exc, 'reason', exc)}"
        else:
            if status == 201:
                break
            code, message = _rejection(status, document)
            message = f"enrollment refused: {message}"
        # Only what may pass by itself is retried; a spent or wrong token never is.
        if code not in (Exit.UNREACHABLE, Exit.TRY_LATER, Exit.RATE_LIMITED) or time.monotonic() + delay > deadline:
            fail(code, message)
        typer.echo(f"edgefleet-agent: {message}; retrying in {delay:.0f}s", err=True)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
    try:
        answer = protocol.EnrollmentAnswer.model_validate(document)
        settings = agent_config.parse(
            {
                "server": {"url": server},
                "device": {
                    "id": answer.device_id,
                    "secret": answer.secret,
                    "name": name,
                    "site": answer.site,
                    "hardware_profile": hardware_profile,
                },
                "mqtt": {"url": answer.broker_url},
                "agent": {"data_dir": str(data_dir), "heartbeat_interval_s": answer.heartbeat_interval_s},
            },
            source="enrollment response",
            environ={},
        )
    except (ValidationError, agent_config.ConfigError) as exc:
        fail(Exit.SERVER_ERROR, f"unexpected enrollment response: {str(exc).splitlines()[0]}")
    try:
        trust = [key.model_dump(mode="json", exclude_none=True) for key in answer.trust_store]
        agent_config.atomic_write(settings.trust_store_path, json.dumps(trust).encode(), mode=0o644)
        agent_config.write(config, settings)
    except OSError as exc:
        fail(
            Exit.WRITE_FAILED,
            f"enrolled as {answer.device_id} but could not write {config}: {exc.strerror}; "
            "the token is spent: revoke this device and ask for a new token",
        )
    data_lock.release()
    typer.echo(f"enrolled {name} as {answer.device_id} at site {answer.site}; config written to {config}")


# --- run ---------------------------------------------------------------------------


@app.command()
def run(config: ConfigOption = agent_config.DEFAULT_CONFIG_PATH) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    settings = _load(config)
    # First, before the slow imports and before anything opens the data dir: a second
    # agent is refused at once, and never touches the first one's outbox or models.
    # Held for the life of the process; the kernel releases it however the process ends.
    data_lock = _lock(settings.data_dir, Exit.FAILURE)
    # The run time (OpenCV, numpy, onnxruntime, paho) is imported by the commands that run it
    # only: enroll and status stay quick, and work, on a device still being provisioned.
    from agent.inference import ModelLoadError
    from agent.runtime import Runtime
    from agent.trust import Trust
    from agent.updater import Updater
    from agent.vision import Vision

    logs.configure(settings.logging.level, settings.logging.format)
    try:
        # One keyring for every verifier: a key learnt while checking a desired document
        # also checks the bundle it names.
        trust = Trust(settings)
        # The updater first: it loads the installed (or fallback) model the pipeline starts with.
        updater = Updater(settings, trust=trust)
        runtime = Runtime(settings, trust=trust, components=[updater, Vision(settings, updater)])
    except (OSError, sqlite3.Error, ModelLoadError) as exc:
        log.error("start failed", extra={"error": str(exc)})
        fail(Exit.FAILURE, f"cannot start: {exc}")
    code = runtime.run()
    data_lock.release()
    raise typer.Exit(code)


# --- status ---------------------------------------------------------------------------


@app.command()
def status(
    config: ConfigOption = agent_config.DEFAULT_CONFIG_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the device's identity, the outbox and the desired generation (never the secret)."""
    settings = _load(config)
    try:
        stats = outbox.inspect(settings.outbox_path)
    except sqlite3.Error as exc:
        fail(Exit.FAILURE, f"{settings.outbox_path}: cannot read the outbox: {exc}")
    generation: int | None = None
    try:
        desired = protocol.decode("desired", settings.desired_path.read_bytes())
        generation = getattr(desired, "generation", None)
    except (OSError, protocol.ProtocolError):
        generation = None
    summary: dict[str, Any] = {
        "device_id": settings.device.id,
        "name": settings.device.name,
        "site": settings.device.site,
        "server": settings.server.url,
        "broker": settings.mqtt.url,
        "data_dir": str(settings.data_dir),
        "heartbeat_interval_s": settings.agent.heartbeat_interval_s,
        "agent_version": __version__,
        "outbox_depth": stats.depth if stats else 0,
        "outbox_bytes": stats.bytes if stats else 0,
        "last_seq": stats.last_seq if stats else 0,
        "acked_seq": stats.acked_seq if stats else 0,
        "dropped_total": stats.dropped_total if stats else 0,
        "desired_generation": generation,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        typer.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


# --- doctor ---------------------------------------------------------------------------


@app.command()
def doctor(config: ConfigOption = agent_config.DEFAULT_CONFIG_PATH) -> None:
    """Check config, clock, server and broker reachability, model load and disk; non-zero on a failure."""
    from agent.doctor import print_checks, run_checks

    checks = run_checks(config)
    print_checks(checks)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(int(Exit.FAILURE))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
