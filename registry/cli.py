"""``edgefleet``: the command CI runs to publish a model version, roll it out, and fetch and check a bundle.

Django-free on purpose: a CI runner installs the light package and talks to
the control plane over HTTPS with an API token (``--token`` or
``EDGEFLEET_TOKEN``). Exit codes are for CI (``registry.client``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import secrets
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from agent.kernel import verify
from registry import rollout_cli
from registry.client import (
    EXIT_INVALID,
    EXIT_NETWORK,
    EXIT_VERIFY,
    err,
    exit_for,
    out,
    reason,
    send,
)
from registry.metadata import parse_metadata

app = typer.Typer(add_completion=False, no_args_is_help=True, help="edgefleet control-plane client for CI.")
app.add_typer(rollout_cli.rollout, name="rollout")
app.add_typer(rollout_cli.rollback, name="rollback")


class _Multipart:
    """A multipart/form-data body streamed from disk, with its exact length known up front."""

    def __init__(self, fields: dict[str, str], files: list[tuple[str, Path]]) -> None:
        self.boundary = f"edgefleet-{secrets.token_hex(12)}"
        self._parts: list[bytes | Path] = []
        for name, value in fields.items():
            self._parts.append(self._head(name) + b"\r\n" + value.encode() + b"\r\n")
        for name, path in files:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._parts.append(self._head(name, path.name) + f"Content-Type: {kind}\r\n\r\n".encode())
            self._parts.append(path)
            self._parts.append(b"\r\n")
        self._parts.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in self._parts)

    def _head(self, name: str, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        extra = "" if filename else "\r\n"
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n{extra}".encode()

    def chunks(self, progress: Progress, task: Any) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                progress.advance(task, len(part))
                yield part
                continue
            with part.open("rb") as handle:
                while chunk := handle.read(256 * 1024):
                    progress.advance(task, len(chunk))
                    yield chunk


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and os.environ.get("EDGEFLEET_PROGRESS") != "1",
    )


@app.command()
def publish(
    model: Annotated[str, typer.Option(help="Model name, e.g. parts-inspector.")],
    file: Annotated[Path, typer.Option("--file", exists=True, dir_okay=False, readable=True, help="The ONNX file.")],
    metadata: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, readable=True, help="Metadata JSON (docs/ci.md).")
    ],
    server: Annotated[str, typer.Option(envvar="EDGEFLEET_SERVER", help="Control plane base URL.")],
    token: Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token with the publish scope.")],
    version: Annotated[str | None, typer.Option(help="Overrides the metadata's version (e.g. the git tag).")] = None,
    reference: Annotated[
        list[Path] | None, typer.Option(exists=True, dir_okay=False, help="Reference/calibration image; repeat.")
    ] = None,
    calibration: Annotated[
        list[Path] | None, typer.Option(exists=True, dir_okay=False, help="INT8 calibration image; repeat.")
    ] = None,
    quantize: Annotated[bool, typer.Option(help="Also build the cpu-int8 bundle.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's answer.")] = 600.0,
    rollout: Annotated[
        str | None,
        typer.Option(help="Then roll it out with this template to the devices running MODEL (rollout scope)."),
    ] = None,
) -> None:
    """Publish a model version; prints the version (and the rollout it started) as JSON on success."""
    try:
        document = json.loads(metadata.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ValueError("metadata must be a JSON object")
        if version:
            document["version"] = version.removeprefix("v")
        if quantize:
            document["quantize"] = True
        text = json.dumps(document)
        parse_metadata(text)
    except ValueError as exc:
        err.print(f"[red]metadata is invalid:[/red] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    files = [("model", file), *[("references", p) for p in reference or []]]
    files += [("calibration", p) for p in calibration or []]
    body = _Multipart({"metadata": text}, files)
    url = f"{server.rstrip('/')}/api/v1/models/{model}/versions/"
    with _progress() as progress:
        task = progress.add_task(f"upload {file.name}", total=body.length)
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked below
            url,
            data=body.chunks(progress, task),
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f"multipart/form-data; boundary={body.boundary}",
                "Content-Length": str(body.length),
                "Accept": "application/json",
            },
        )
        status, answer = send(request, timeout)
    verb = "published" if status == 201 else "already published (identical content)"
    bundles = ", ".join(f"{b['target']} {b['size']} B" for b in answer.get("bundles", []))
    err.print(f"[green]{model} {answer.get('version')} {verb}[/green]: sequence {answer.get('sequence')}; {bundles}")
    if rollout:
        target = {"running_model": model}
        answer["rollout"] = rollout_cli.start_rollout(server, token, model, str(answer.get("version")), rollout, target)
    out.print_json(data=answer)


@app.command()
def download(
    url: Annotated[str, typer.Argument(help="Bundle download URL (bundle_url of the desired state).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the bundle.")],
    device_id: Annotated[str, typer.Option(envvar="EDGEFLEET_DEVICE_ID")],
    secret: Annotated[str, typer.Option(envvar="EDGEFLEET_DEVICE_SECRET")],
    retries: Annotated[int, typer.Option(help="Resume this many times after a dropped link.")] = 5,
    timeout: Annotated[float, typer.Option()] = 60.0,
) -> None:
    """Download a bundle as a device, resuming a partial file with HTTP Range."""
    auth = "Basic " + b64encode(f"{device_id}:{secret}".encode()).decode()
    partial = output.with_name(output.name + ".part")
    for attempt in range(retries + 1):
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Authorization": auth}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                mode = "ab" if response.status == 206 else "wb"
                with partial.open(mode) as handle:
                    while chunk := response.read(256 * 1024):
                        handle.write(chunk)
            partial.replace(output)
            err.print(f"downloaded {output} ({output.stat().st_size} bytes, resumed at {have})")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                partial.unlink()
                continue
            err.print(f"[red]refused:[/red] {reason(exc)}")
            raise typer.Exit(exit_for(exc.code)) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
            err.print(f"[yellow]attempt {attempt + 1} failed:[/yellow] {exc}")
    raise typer.Exit(EXIT_NETWORK)


@app.command("verify")
def verify_command(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    trust_store: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="JSON: a list of keys, or {'trust_store': [...]}.")
    ],
    agent_version: Annotated[str, typer.Option(help="Check min_agent_version against this.")] = "0.1.0",
    references: Annotated[bool, typer.Option(help="Also run the model on its reference inputs.")] = True,
) -> None:
    """Verify a bundle exactly as a device does; prints its manifest summary as JSON."""
    try:
        document = json.loads(trust_store.read_text(encoding="utf-8"))
        entries = document.get("trust_store", []) if isinstance(document, dict) else document
        keyring = verify.Keyring.from_trust_store(entries)
        with tempfile.TemporaryDirectory(prefix="edgefleet-verify-") as tmp:
            checked = verify.verify_bundle(bundle, Path(tmp) / "bundle", keyring, agent_version=agent_version)
            cases = verify.check_references(checked) if references else 0
    except (verify.VerificationError, ValueError) as exc:
        err.print(f"[red]bundle refused:[/red] {exc}")
        raise typer.Exit(EXIT_VERIFY) from None
    manifest = checked.manifest
    summary = {
        "model": manifest.model,
        "version": manifest.version,
        "sequence": manifest.sequence,
        "target": manifest.target,
        "key_id": checked.key_id,
        "files": len(manifest.files),
        "references_checked": cases,
        "expires_at": manifest.expires_at.isoformat(),
        "quantization": manifest.quantization,
    }
    err.print(f"[green]bundle verified[/green]: {manifest.model} {manifest.version} {manifest.target}")
    out.print_json(data=summary)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
