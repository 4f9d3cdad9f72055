"""docs/ci.md as CI reads it: its metadata examples pass the validator, its OpenSSL recipe verifies a real bundle.

The code blocks are read out of the page itself, so the guide cannot drift
from what the server accepts.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.kernel.manifest import MANIFEST_NAME
from registry.metadata import parse_metadata
from registry.models import Bundle
from tests.paths import ROOT
from tests.registry.helpers import publish

GUIDE = ROOT / "docs" / "ci.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language: str, *, under: str | None = None) -> list[tuple[str, str]]:
    """(nearest heading, code) of each ``language`` block of the guide, optionally only under one heading."""
    text = GUIDE.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        if match.group(1) != language:
            continue
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        heading = headings[-1] if headings else ""
        if under is None or heading == under:
            found.append((heading, match.group(2)))
    return found


METADATA = blocks("json")


@pytest.mark.parametrize(("heading", "code"), METADATA, ids=[heading for heading, _ in METADATA])
def test_every_metadata_example_in_the_guide_passes_the_validator(heading: str, code: str) -> None:
    parse_metadata(code)


def test_the_guide_shows_a_classifier_a_yolo_detector_and_a_text_line_classifier() -> None:
    examples = {heading: parse_metadata(code) for heading, code in METADATA}

    classifier = examples["An image classifier"]
    assert (classifier.task, classifier.input.resize) == ("classification", "stretch")
    detector = examples["A YOLO detector"]
    assert (detector.task, detector.input.resize, detector.input.padding) == ("detection", "letterbox", (114, "pixel"))
    text_line = examples["A text-line classifier"]
    spec = text_line.input
    assert (text_line.task, spec.resize, spec.height, spec.width) == ("classification", "fit_height", 48, 320)
    assert spec.padding == (0.0, "normalised")


# --- the signature, checked with the openssl command line --------------------------------------

RECIPE = blocks("sh", under="The check")


def run_recipe(folder: Path, bundle: Path, public_key: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir()
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "BUNDLE": str(bundle), "PUBLIC_KEY": public_key}
    return subprocess.run(
        ["bash", "-c", RECIPE[0][1]], cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def with_member(archive: bytes, name: str, change: bytes) -> bytes:
    """The archive again, one member replaced."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as source, tarfile.open(fileobj=out, mode="w") as tar:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == name:
                data, member.size = change, len(change)
            tar.addfile(member, io.BytesIO(data))
    return gzip.compress(out.getvalue())


@pytest.mark.django_db
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_the_guides_openssl_recipe_verifies_a_published_bundle_and_nothing_else(
    token_client, classifier_onnx, metadata, tmp_path
):
    assert len(RECIPE) == 1, "docs/ci.md has one sh block under 'The check'"
    ci = token_client("publish")
    assert publish(ci, classifier_onnx, metadata()).status_code == 201
    archive = Bundle.objects.get().file.read()
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(archive)
    keyring = ci.get("/api/v1/keyring").json()
    [entry] = keyring["trust_store"]

    good = run_recipe(tmp_path / "good", bundle, entry["public_key"])

    assert good.returncode == 0, good.stdout + good.stderr
    assert "Signature Verified Successfully" in good.stdout

    # One byte of the manifest changed: openssl refuses the signature.
    with tarfile.open(bundle) as tar:
        manifest = tar.extractfile(MANIFEST_NAME).read()  # type: ignore[union-attr]
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(with_member(archive, MANIFEST_NAME, manifest.replace(b'"sequence":1', b'"sequence":9')))
    refused = run_recipe(tmp_path / "tampered", tampered, entry["public_key"])
    assert refused.returncode != 0
    assert "Signature Verification Failure" in refused.stdout + refused.stderr
    assert json.loads(manifest)["sequence"] == 1  # so the replacement above did change a byte

    # Another key than the one the signature names: refused before openssl verifies anything.
    other = "A" * 43 + "="
    assert run_recipe(tmp_path / "other-key", bundle, other).returncode != 0
