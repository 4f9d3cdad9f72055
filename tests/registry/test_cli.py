"""The `edgefleet` CLI against a running control plane: exit codes CI relies on, download resume, verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from registry import cli, client
from registry.models import Bundle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

runner = CliRunner()


@pytest.fixture
def files(tmp_path, classifier_onnx, metadata, png_images) -> dict[str, Path]:
    model = tmp_path / "model.onnx"
    model.write_bytes(classifier_onnx)
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(metadata("0.0.1")))
    image = tmp_path / "ref.png"
    image.write_bytes(png_images[0])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    return {"model": model, "metadata": meta, "image": image, "junk": junk}


def publish(server: str, token: str, files: dict[str, Path], *extra: str, model: str = "model") -> object:
    args = [
        "publish",
        "--server",
        server,
        "--token",
        token,
        "--model",
        "parts",
        "--file",
        str(files[model]),
        "--metadata",
        str(files["metadata"]),
        *extra,
    ]
    return runner.invoke(cli.app, args)


def test_publish_exit_codes_follow_the_servers_answer(live_server, token_client, admin_user, files):
    from core.models import ApiToken

    _, token = ApiToken.issue(admin_user, name="ci", scopes=["publish"])
    _, reader = ApiToken.issue(admin_user, name="reader", scopes=["read"])
    url = live_server.url

    first = publish(url, token, files, "--version", "v1.4.0", "--reference", str(files["image"]))
    again = publish(url, token, files, "--version", "v1.4.0", "--reference", str(files["image"]))
    conflict = publish(url, token, files, "--version", "v1.4.0")
    forbidden = publish(url, reader, files, "--version", "v1.5.0")
    invalid = publish(url, token, files, "--version", "v1.5.0", model="junk")
    unreachable = publish("http://127.0.0.1:9", token, files)

    assert first.exit_code == client.EXIT_OK, first.output
    assert json.loads(first.stdout)["version"] == "1.4.0"
    assert again.exit_code == client.EXIT_OK and "already published" in again.output
    assert conflict.exit_code == client.EXIT_CONFLICT
    assert forbidden.exit_code == client.EXIT_AUTH
    assert invalid.exit_code == client.EXIT_INVALID and "not_onnx" in invalid.output
    assert unreachable.exit_code == client.EXIT_NETWORK


def test_a_device_resumes_a_download_and_verifies_the_bundle(
    live_server, admin_user, files, enroll_device, site, tmp_path
):
    from core.models import ApiToken

    _, token = ApiToken.issue(admin_user, name="ci", scopes=["publish"])
    assert publish(live_server.url, token, files).exit_code == 0
    bundle = Bundle.objects.get()
    enrolled = enroll_device(site)
    output = tmp_path / "bundle.tar.gz"
    # A previous attempt left the first third behind.
    Path(f"{output}.part").write_bytes(bundle.file.read()[: bundle.size // 3])
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"trust_store": enrolled.trust_store}))

    fetched = runner.invoke(
        cli.app,
        [
            "download",
            f"{live_server.url}{bundle.download_path()}",
            "-o",
            str(output),
            "--device-id",
            enrolled.device.device_id,
            "--secret",
            enrolled.secret,
        ],
    )
    checked = runner.invoke(cli.app, ["verify", str(output), "--trust-store", str(trust)])

    assert fetched.exit_code == 0, fetched.output
    assert f"resumed at {bundle.size // 3}" in fetched.output
    assert hashlib.sha256(output.read_bytes()).hexdigest() == bundle.sha256
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["references_checked"] == 3  # generated: reference_count
    damaged = bytearray(output.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    output.write_bytes(bytes(damaged))
    assert runner.invoke(cli.app, ["verify", str(output), "--trust-store", str(trust)]).exit_code == client.EXIT_VERIFY


def test_the_cli_does_not_import_django():
    import subprocess
    import sys

    code = "import sys, registry.cli; sys.exit(1 if any(m.startswith('django') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
