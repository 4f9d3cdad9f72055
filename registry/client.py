"""The ``edgefleet`` command's HTTP side: JSON requests to the control plane and CI's exit codes.

Django-free, standard library only, like the rest of the command.

==  =========================================================
0   done: published (201), identical content already there (200), a rollout completed
2   wrong command-line usage
3   authentication or permission refused (401, 403)
4   refused as invalid: not ONNX, shape mismatch, too large, bad metadata (400, 413, 415, 422)
5   conflict: this version exists with different content, or the state forbids it (409)
6   network failure or server error (connection, timeout, 5xx)
7   bundle verification failed
10  the rollout halted at a gate
11  the rollout halted and its devices were sent back
12  the rollout was aborted
13  still running when ``--timeout`` ran out
==  =========================================================
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import typer
from rich.console import Console

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_INVALID, EXIT_CONFLICT, EXIT_NETWORK, EXIT_VERIFY = 0, 2, 3, 4, 5, 6, 7
EXIT_HALTED, EXIT_REVERTED, EXIT_ABORTED, EXIT_TIMEOUT = 10, 11, 12, 13

err = Console(stderr=True)
out = Console()


def exit_for(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 409:
        return EXIT_CONFLICT
    if 400 <= status < 500:
        return EXIT_INVALID
    return EXIT_NETWORK


def reason(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        return f"HTTP {error.code}"
    if isinstance(body, dict):
        return f"HTTP {error.code} {body.get('code', '')}: {body.get('detail', body)}".strip()
    return f"HTTP {error.code}: {body}"


def send(request: urllib.request.Request, timeout: float) -> tuple[int, dict[str, Any]]:
    if not request.full_url.startswith(("http://", "https://")):
        err.print(f"[red]server URL must be http(s):[/red] {request.full_url}")
        raise typer.Exit(EXIT_USAGE)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        err.print(f"[red]refused:[/red] {reason(exc)}")
        raise typer.Exit(exit_for(exc.code)) from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        err.print(f"[red]network failure:[/red] {exc}")
        raise typer.Exit(EXIT_NETWORK) from None


def call(server: str, token: str, method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
    """One JSON request to the control plane's API with a bearer token; exits with CI's code on failure."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(  # noqa: S310 - send() checks the scheme
        f"{server.rstrip('/')}{path}", data=data, method=method, headers=headers
    )
    return send(request, timeout)[1]
