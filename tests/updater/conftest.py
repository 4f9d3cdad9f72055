"""Fixtures of the updater tests: crafted bundles, a static bundle server and a recording runtime.

The crafted bundles and signers are the registry tests' own (tests/registry/conftest.py),
so every attack those tests refuse in ``agent.kernel.verify`` is fed here through the updater.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import config as agent_config
from agent.kernel import protocol
from agent.kernel.manifest import canonical_bytes
from agent.kernel.verify import desired_signing_bytes
from registry.bundles import Signer
from tests.agent.conftest import bridge  # noqa: F401 - the real bridge, shared with the agent tests
from tests.registry import conftest as registry_fixtures
from tests.registry.conftest import Crafted, make_classifier, trusted
from tests.updater.helpers import RecordingRuntime  # noqa: F401 - the tests import it from here


@pytest.fixture(scope="session")
def classifier_onnx() -> bytes:
    return make_classifier()


@pytest.fixture(scope="session")
def signer() -> Signer:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def png_images() -> list[bytes]:
    return registry_fixtures.png_images.__wrapped__()  # type: ignore[attr-defined]


@pytest.fixture
def crafted(classifier_onnx: bytes) -> Crafted:
    return Crafted(classifier_onnx)


class BundleServer:
    """Serves bundles as the control plane does (ETag, Content-Length, Range) and records each request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        """When set, a whole-file answer stops after this many bytes (a dropped connection)."""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start, code = 0, 200
                wanted = self.headers.get("Range")
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                if wanted and self.headers.get("If-Range", etag) == etag:
                    start, code = int(wanted.split("=")[1].split("-")[0]), 206
                body = data[start:]
                self.send_response(code)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if outer.cut_after is not None and code == 200:
                    self.wfile.write(body[: outer.cut_after])
                    outer.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def add(self, name: str, archive: bytes) -> str:
        path = f"/bundles/{name}"
        self.files[path] = archive
        return path

    def downloads(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle_server() -> Iterator[BundleServer]:
    server = BundleServer()
    yield server
    server.close()


def make_config(
    tmp_path: Path, server_url: str, trust: list[dict[str, Any]], **sections: Any
) -> agent_config.AgentConfig:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "trust.json").write_text(json.dumps(trust))
    document: dict[str, Any] = {
        "server": {"url": server_url},
        "device": {"id": "dev-test", "secret": "s3cret"},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "agent": {"data_dir": str(data_dir)},
        "inference": {"intra_op_threads": 1},
    }
    document.update(sections)
    return agent_config.AgentConfig.model_validate(document)


@pytest.fixture
def config(tmp_path: Path, bundle_server: BundleServer, signer: Signer) -> agent_config.AgentConfig:
    return make_config(tmp_path, bundle_server.url, [trusted(signer)])


def desired_for(
    bundle: Crafted, archive: bytes, url: str, key: Signer, generation: int, **model: Any
) -> protocol.Desired:
    """A signed desired document naming ``bundle``'s manifest, served as ``archive`` at ``url``."""
    manifest = bundle.manifest()
    fields: dict[str, Any] = {
        "name": manifest.model,
        "version": manifest.version,
        "sequence": manifest.sequence,
        "target": "cpu-fp32",
        "bundle_url": url,
        "sha256": hashlib.sha256(archive).hexdigest(),
        "size": len(archive),
        "manifest_sha256": hashlib.sha256(canonical_bytes(manifest)).hexdigest(),
    }
    fields.update(model)
    return sign(protocol.Desired(generation=generation, model=fields), key)


def sign(desired: protocol.Desired, key: Signer) -> protocol.Desired:
    return desired.model_copy(update={"signature": key.sign(desired_signing_bytes(desired))})


def publish(bundle: Crafted, key: Signer, server: BundleServer, tmp_path: Path, generation: int) -> protocol.Desired:
    """Pack ``bundle`` as it is now, serve it, and return the signed desired document naming it."""
    folder = tmp_path / f"pack-{generation}"
    folder.mkdir()
    archive = bundle.pack(key, folder).read_bytes()
    url = server.add(f"{bundle.fields['version']}-{generation}.tar.gz", archive)
    return desired_for(bundle, archive, url, key, generation)
