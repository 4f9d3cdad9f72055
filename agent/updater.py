"""Safe model updates: converge on the signed ``desired`` document (DESIGN.md, "Model bundle v1").

One worker thread does the work, so an update never blocks the run loop or
inference. It listens to the desired state (``agent.desired``), which hands
on only documents whose signature it verified; for each it:

1. downloads the bundle it names with resume (``Range`` + ``If-Range``), after
   checking ``ETag`` and ``Content-Length`` against the document and the size
   cap, and checks the archive's sha256 (phase ``downloading``);
2. verifies it with ``agent.kernel.verify`` (signature, digests, sequence, expiry,
   agent version, archive limits; phase ``verifying``);
3. loads it and reproduces its reference outputs (phase ``validating``);
4. installs it atomically: the unpacked folder (files already fsynced) is
   renamed into ``models/``, then the ``current`` symlink is replaced by a
   rename and the folder fsynced; the old model becomes ``previous``;
5. swaps the running session between two frames and reports ``active``.

A failure at any step is reported as ``failed`` with its reason, and the
model in service keeps serving. A ``kill -9`` anywhere leaves ``current``
pointing at a complete, verified folder (the old one or the new one); at
start the agent re-checks that folder's signature and digests before loading
it, removes half-unpacked folders and converges on the stored desired
document again, resuming a partial download.

The fallback model (``agent/fallback``) serves when no model is installed,
when the installed one does not load, or when it fails on ``crash_threshold``
frames in a row; the device then reports ``fallback=true`` and raises a
``fallback_engaged`` event: degraded, never silent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from agent import __version__
from agent.config import AgentConfig
from agent.fallback import METADATA as FALLBACK_METADATA
from agent.inference import Inferer, ModelLoadError, ModelSession, SessionHolder
from agent.kernel import protocol, verify
from agent.kernel.manifest import MANIFEST_NAME, SIGNATURE_NAME, ManifestError, parse_manifest
from agent.trust import Trust, authorization

log = logging.getLogger(__name__)

CURRENT, PREVIOUS = "current", "previous"
_UNPACK_PREFIX = ".unpack-"
_CHUNK = 64 * 1024
# Tests (and the chaos suite) set this to a phase name to make the agent SIGKILL itself there.
KILL_AT_ENV = "EDGEFLEET_UPDATER_KILL_AT"
_WATCH_INTERVAL_S = 0.5


class UpdateError(Exception):
    """An update step failed; ``reason`` is reported in ``reported.error``."""

    def __init__(self, reason: str, detail: str = "", *, retry: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry = retry
        """True for failures that may pass by themselves (network, server): tried again later."""


class _Desired(Protocol):
    def subscribe(self, listener: Callable[[protocol.Desired], None]) -> None: ...


class _Reporter(Protocol):
    @property
    def desired_state(self) -> _Desired: ...

    model_version: str | None

    def set_reported(self, **fields: Any) -> None: ...

    def event(self, kind: str, **data: Any) -> None: ...


class _Watched(Protocol):
    consecutive_errors: int


@dataclass(frozen=True)
class Installed:
    """A verified bundle folder under ``models/``."""

    directory: Path
    bundle: verify.VerifiedBundle

    @property
    def name(self) -> str:
        return self.bundle.manifest.model

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    @property
    def sequence(self) -> int:
        return self.bundle.manifest.sequence


def checkpoint(phase: str) -> None:
    """The kill -9 hook of the fault tests: die here, without any cleanup, when asked to."""
    if os.environ.get(KILL_AT_ENV) == phase:
        log.warning("test kill", extra={"phase": phase})
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the model store on disk ---------------------------------------------------------


class ModelStore:
    """``models/``: verified bundle folders, ``current`` and ``previous`` symlinks, partial downloads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads = root / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True, mode=0o700)

    def clean(self) -> None:
        """Remove what a crash left half done: unpack folders and pointer temporaries."""
        for entry in self.root.iterdir():
            if entry.name.startswith(_UNPACK_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                log.info("partial unpack removed", extra={"path": str(entry)})
            elif entry.name.startswith(".") and entry.name.endswith(".link"):
                entry.unlink(missing_ok=True)

    def pointer(self, name: str) -> Path | None:
        link = self.root / name
        try:
            target = os.readlink(link)
        except OSError:
            return None
        path = self.root / target
        return path if path.is_dir() and "/" not in target else None

    def set_pointer(self, name: str, directory: Path) -> None:
        """Point ``name`` at ``directory``: a symlink made beside it, renamed over the old one."""
        tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}.link"
        os.symlink(directory.name, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def unpack_dir(self) -> Path:
        return self.root / f"{_UNPACK_PREFIX}{uuid.uuid4().hex[:12]}"

    def install(self, unpacked: Path, bundle: verify.VerifiedBundle) -> Path:
        """Move a verified unpack folder to its final name; durable before any pointer names it."""
        for folder, _dirs, _files in os.walk(unpacked):
            fsync_dir(Path(folder))
        manifest = bundle.manifest
        final = self.root / f"{manifest.model}-{manifest.version}-{bundle.manifest_sha256[:12]}"
        if final.exists():
            # Installed before (e.g. killed after the rename, before the pointer): the same
            # manifest digest means the same files, so the fresh copy is not needed.
            shutil.rmtree(unpacked)
        else:
            os.rename(unpacked, final)
            fsync_dir(self.root)
        return final

    def installed(self) -> list[Path]:
        return sorted(
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p != self.downloads
        )

    def find(self, manifest_sha256: str) -> Path | None:
        for directory in self.installed():
            try:
                digest = hashlib.sha256((directory / MANIFEST_NAME).read_bytes()).hexdigest()
            except OSError:
                continue
            if digest == manifest_sha256:
                return directory
        return None

    def prune(self) -> None:
        """Keep ``current`` and ``previous`` (rollback without download); remove older versions."""
        keep = {self.pointer(CURRENT), self.pointer(PREVIOUS)}
        for directory in self.installed():
            if directory not in keep:
                shutil.rmtree(directory, ignore_errors=True)
                log.info("old model removed", extra={"path": directory.name})


def check_installed(directory: Path, keyring: verify.Keyring) -> verify.VerifiedBundle:
    """Re-check an installed folder before it serves: signature and every file's digest and size.

    Expiry is not checked here: it guards the install against a frozen feed,
    and a model in service must not stop at its date.
    """
    try:
        manifest_bytes = (directory / MANIFEST_NAME).read_bytes()
        signature = verify.read_signature((directory / SIGNATURE_NAME).read_bytes())
    except OSError as exc:
        raise verify.MissingFile(f"{directory.name}: {exc.strerror}") from None
    key = keyring.verify(manifest_bytes, signature)
    try:
        manifest = parse_manifest(manifest_bytes)
    except ManifestError as exc:
        raise verify.BadManifest(str(exc)) from None
    for entry in manifest.files:
        path = directory / entry.path
        try:
            size = path.stat().st_size
            if size != entry.size:
                raise verify.SizeMismatch(f"{entry.path} is {size} bytes, the manifest says {entry.size}")
            if _sha256(path) != entry.sha256:
                raise verify.DigestMismatch(f"{entry.path} does not match its sha256")
        except FileNotFoundError:
            raise verify.MissingFile(f"{entry.path} is missing") from None
    return verify.VerifiedBundle(manifest, directory, key.key_id, hashlib.sha256(manifest_bytes).hexdigest())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --- download ------------------------------------------------------------------------------


def download(
    url: str,
    part: Path,
    *,
    authorization: str,
    sha256: str | None,
    size: int | None,
    max_bytes: int,
    timeout: float,
    stop: threading.Event | None = None,
) -> Path:
    """Fetch ``url`` into ``part``, resuming what is already there; returns the complete file.

    The response is checked before its first byte is written: ``ETag`` must be
    the announced sha256, the length must match the announced size and stay
    under ``max_bytes``. The finished file must hash to ``sha256``.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size and (sha256 is None or _sha256(part) == sha256):
        return part
    headers = {"Authorization": authorization}
    etag = f'"{sha256}"' if sha256 else None
    if offset and etag:
        headers["Range"] = f"bytes={offset}-"
        headers["If-Range"] = etag  # a different file comes back whole, never spliced onto ours
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) from the config
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            part.unlink(missing_ok=True)
            raise UpdateError("download_failed", "the server refused the resume range", retry=True) from None
        transient = exc.code >= 500 or exc.code == 429
        raise UpdateError("download_failed", f"HTTP {exc.code} from {url}", retry=transient) from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpdateError("download_failed", f"{url}: {getattr(exc, 'reason', exc)}", retry=True) from None
    with response:
        got_etag = response.headers.get("ETag")
        if etag and got_etag and got_etag.strip() != etag:
            raise UpdateError("etag_mismatch", f"the server sends {got_etag}, the desired state names {etag}")
        length_header = response.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise UpdateError("no_content_length", "the server did not announce the bundle's length", retry=True)
        length = int(length_header)
        if response.status == 206:
            expected_range = f"bytes {offset}-"
            if not (response.headers.get("Content-Range") or "").startswith(expected_range):
                raise UpdateError("download_failed", "the server answered another range", retry=True)
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        total = offset + length
        if total > max_bytes:
            raise UpdateError("too_large", f"the bundle is {total} bytes, the limit is {max_bytes}")
        if size is not None and total != size:
            raise UpdateError("size_mismatch", f"the server sends {total} bytes, the desired state names {size}")
        received = 0
        with part.open(mode) as out:
            while received < length:
                if stop is not None and stop.is_set():
                    raise UpdateError("stopped", "the agent is stopping", retry=True)
                chunk = response.read(min(_CHUNK, length - received))
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                out.flush()
                checkpoint("downloading")
            out.flush()
            os.fsync(out.fileno())
    if received < length:
        detail = f"the transfer ended after {offset + received} of {total} bytes"
        raise UpdateError("download_failed", detail, retry=True)
    if sha256 is not None and _sha256(part) != sha256:
        part.unlink(missing_ok=True)
        raise UpdateError("digest_mismatch", "the downloaded bundle does not match the sha256 of the desired state")
    return part


# --- the component ---------------------------------------------------------------------------


class Updater:
    """A runtime ``Component``: keeps the right, verified model in ``holder``."""

    def __init__(self, config: AgentConfig, *, trust: Trust | None = None, agent_version: str = __version__) -> None:
        self.config = config
        self.settings = config.updater
        self.agent_version = agent_version
        self.store = ModelStore(config.models_dir)
        self.trust = trust or Trust(config)
        self.active: Installed | None = None
        self.holder = SessionHolder(self._fallback_session(), fallback=True)
        self._runtime: _Reporter | None = None
        self._jobs: queue.Queue[protocol.Desired | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: _Watched | None = None
        self._retry: protocol.Desired | None = None
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._shadow_digest: str | None = None
        self.converged = threading.Event()
        """Set each time a desired document has been handled (tests and benchmarks wait on it)."""
        self._load_current()

    # --- component ---------------------------------------------------------------------

    def start(self, runtime: _Reporter) -> None:
        self._runtime = runtime
        self._publish_state()
        if self.holder.fallback:
            self._event("fallback_engaged", reason=self._fallback_reason)
        # After a restart the stored document comes first: the update converges on it again.
        runtime.desired_state.subscribe(self.submit)
        self._thread = threading.Thread(target=self._work, name="updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, desired: protocol.Desired) -> None:
        """Queue a verified desired document (the desired state's listener); the work happens on our thread."""
        self._jobs.put(desired)

    def attach(self, pipeline: _Watched) -> None:
        """Watch a pipeline's run of failed frames: too many in a row engage the fallback model."""
        self._watched = pipeline

    # --- start-up ----------------------------------------------------------------------

    _fallback_reason = "no model installed"

    def _fallback_session(self) -> Inferer:
        return ModelSession.from_metadata(FALLBACK_METADATA, settings=self.config.inference)

    def _load_current(self) -> None:
        self.store.clean()
        directory = self.store.pointer(CURRENT)
        if directory is None:
            return
        try:
            installed = Installed(directory, check_installed(directory, self.trust.keyring))
            session = ModelSession.from_bundle(directory, settings=self.config.inference)
        except (verify.VerificationError, ModelLoadError, OSError, ManifestError) as exc:
            self._fallback_reason = f"the installed model {directory.name} does not load: {exc}"[:500]
            log.error("model load failed", extra={"path": str(directory), "error": str(exc)})
            return
        self.holder.swap(session)
        self.active = installed
        log.info("model loaded", extra={"model": installed.name, "version": installed.version})

    # --- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        retry_at: float | None = None
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=_WATCH_INTERVAL_S)
            except queue.Empty:
                job = None
                self._watch()
                self._send_pending_events()
                if retry_at is not None and self._retry is not None and time.monotonic() >= retry_at:
                    job, retry_at = self._retry, None
                if job is None:
                    continue
            if job is None:
                return
            # Only the newest document matters: skip those already superseded in the queue.
            while True:
                try:
                    newer = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if newer is None:
                    return
                job = newer
            self._retry = None
            try:
                self.converge(job)
            except UpdateError as exc:
                if exc.retry:
                    self._retry, retry_at = job, time.monotonic() + self.settings.retry_after_s
            except OSError as exc:
                # A full or failing disk while unpacking or installing: the model in service keeps
                # serving (the pointer switch is the last step) and the update is tried again.
                log.error("update io error", extra={"error": str(exc)})
                self.store.clean()
                self._publish_state(phase="failed", error=f"io_error: {exc}"[:2000])
                self._retry, retry_at = job, time.monotonic() + self.settings.retry_after_s
            finally:
                self.converged.set()

    def _watch(self) -> None:
        pipeline = self._watched
        if pipeline is None or self.holder.fallback:
            return
        if pipeline.consecutive_errors >= self.settings.crash_threshold:
            failing = self.active.version if self.active else None
            pipeline.consecutive_errors = 0
            self.engage_fallback(f"model {failing} failed on {self.settings.crash_threshold} frames in a row")

    def engage_fallback(self, reason: str) -> None:
        self.holder.swap(self._fallback_session(), fallback=True)
        self._fallback_reason = reason
        log.error("fallback engaged", extra={"reason": reason})
        self._event("fallback_engaged", reason=reason)
        self._publish_state(phase="failed", error=f"fallback: {reason}"[:2000])

    # --- converging ---------------------------------------------------------------------------

    def converge(self, desired: protocol.Desired) -> None:
        """Bring the device to a verified ``desired``; raises UpdateError (already reported) when it cannot.

        The model in service first, then the candidate to shadow (``desired.shadow``).
        """
        self._converge_model(desired)
        self._converge_shadow(desired.shadow)

    def _converge_model(self, desired: protocol.Desired) -> None:
        if desired.model is None:
            self._publish_state(phase="active" if self.active else "idle", error=None)
            return
        wanted = desired.model
        if self.active is not None and self.active.bundle.manifest_sha256 == wanted.manifest_sha256:
            if self.holder.fallback:
                # The model this document names is the one that failed: keep the fallback, say so.
                self._publish_state(phase="failed", error=f"fallback: {self._fallback_reason}"[:2000])
            else:
                self._publish_state(phase="active", error=None)
            return
        on_disk = self.store.find(wanted.manifest_sha256)
        if on_disk is not None:
            self._switch_to_installed(on_disk, wanted, rollback_to=desired.rollback_to)
            return
        self._update(wanted, rollback_to=desired.rollback_to)

    def _download(self, wanted: protocol.BundleRef) -> Path:
        """The bundle ``wanted`` names, downloaded (resumed where a part exists) and its digest checked."""
        url = wanted.bundle_url
        if not url.startswith(("http://", "https://")):
            url = self.config.server.url + "/" + url.lstrip("/")
        return download(
            url,
            self._part(wanted),
            authorization=authorization(self.config),
            sha256=wanted.sha256,
            size=wanted.size,
            max_bytes=self.settings.max_bundle_bytes,
            timeout=self.settings.download_timeout_s,
            stop=self._stopping,
        )

    def _part(self, wanted: protocol.BundleRef) -> Path:
        return self.store.downloads / f"{wanted.sha256 or wanted.manifest_sha256}.part"

    def _update(self, wanted: protocol.BundleRef, *, rollback_to: str | None) -> None:
        self._publish_state(phase="downloading", error=None)
        part = self._part(wanted)
        try:
            archive = self._download(wanted)
        except UpdateError as exc:
            self._fail(exc.reason, str(exc), retry=exc.retry)
        self._publish_state(phase="verifying")
        unpacked = self.store.unpack_dir()
        try:
            bundle = self._verify_bundle(archive, unpacked, wanted, rollback_to=rollback_to)
            checkpoint("verifying")
            self._publish_state(phase="validating")
            verify.check_references(bundle, threads=max(1, self.config.inference.intra_op_threads))
            session = ModelSession.from_bundle(unpacked, settings=self.config.inference)
            checkpoint("validating")
        except verify.VerificationError as exc:
            shutil.rmtree(unpacked, ignore_errors=True)
            # A bad archive is not kept: the next attempt downloads it afresh.
            part.unlink(missing_ok=True)
            self._event("validation_failed", version=wanted.version, reason=exc.reason, detail=exc.detail[:300])
            self._fail(exc.reason, str(exc))
        except (ModelLoadError, ValueError) as exc:
            # ValueError: a reference file that is not a readable .npy, or a spec the model cannot meet.
            shutil.rmtree(unpacked, ignore_errors=True)
            part.unlink(missing_ok=True)
            self._event("validation_failed", version=wanted.version, reason="model_load_failed", detail=str(exc)[:300])
            self._fail("model_load_failed", str(exc))
        directory = self.store.install(unpacked, bundle)
        checkpoint("installing")
        self._activate(
            Installed(
                directory, verify.VerifiedBundle(bundle.manifest, directory, bundle.key_id, bundle.manifest_sha256)
            ),
            session,
            phase="active",
        )
        part.unlink(missing_ok=True)

    def _converge_shadow(self, wanted: protocol.BundleRef | None) -> None:
        """Run ``wanted`` beside the model in service (or stop shadowing): verified as an install is, never acted on.

        A candidate that fails verification or does not load is reported
        (event ``shadow_failed``) and not run; the model in service is untouched
        either way. A failed download is retried like an update's.
        """
        if wanted is None:
            if self.holder.set_shadow(None) is not None:
                self._shadow_digest = None
                self._publish_state(shadow_version=None)
            return
        if wanted.manifest_sha256 == self._shadow_digest:
            return
        try:
            session = self._load_candidate(wanted)
        except UpdateError as exc:
            self._event("shadow_failed", version=wanted.version, reason=exc.reason, detail=str(exc)[:300])
            if exc.retry:
                raise
            return
        except verify.VerificationError as exc:
            self._event("shadow_failed", version=wanted.version, reason=exc.reason, detail=exc.detail[:300])
            return
        except (ModelLoadError, ValueError) as exc:
            self._event("shadow_failed", version=wanted.version, reason="model_load_failed", detail=str(exc)[:300])
            return
        self.holder.set_shadow(session)
        self._shadow_digest = wanted.manifest_sha256
        self._event("shadow_started", name=wanted.name, version=wanted.version)
        self._publish_state(shadow_version=wanted.version)

    def _load_candidate(self, wanted: protocol.BundleRef) -> ModelSession:
        """Download, verify and load a bundle without installing it: its files go once it is loaded."""
        archive = self._download(wanted)
        unpacked = self.store.unpack_dir()
        try:
            bundle = self._verify_bundle(archive, unpacked, wanted, rollback_to=None, candidate=True)
            verify.check_references(bundle, threads=max(1, self.config.inference.intra_op_threads))
            return ModelSession.from_bundle(unpacked, settings=self.config.inference)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
            archive.unlink(missing_ok=True)

    def _verify_bundle(
        self,
        archive: Path,
        unpacked: Path,
        wanted: protocol.BundleRef,
        *,
        rollback_to: str | None,
        candidate: bool = False,
    ) -> verify.VerifiedBundle:
        installed = self.active.bundle.manifest if self.active else None
        # A shadow candidate never serves, so its sequence is not held against the installed one.
        same_model = installed is not None and installed.model == wanted.name and not candidate
        installed_sequence = installed.sequence if installed is not None and same_model else None

        def attempt(keyring: verify.Keyring) -> verify.VerifiedBundle:
            shutil.rmtree(unpacked, ignore_errors=True)
            return verify.verify_bundle(
                archive,
                unpacked,
                keyring,
                agent_version=self.agent_version,
                installed_sequence=installed_sequence,
                # Only a document that is an explicit, signed rollback to this version may go back.
                allowed_rollback=rollback_to,
                limits=verify.Limits(
                    max_archive_bytes=self.settings.max_bundle_bytes,
                    max_unpacked_bytes=2 * self.settings.max_bundle_bytes,
                ),
            )

        bundle = self.trust.verify(attempt)
        manifest = bundle.manifest
        if (manifest.model, manifest.version) != (wanted.name, wanted.version):
            raise verify.BadManifest(
                f"the bundle holds {manifest.model} {manifest.version}, the desired state names "
                f"{wanted.name} {wanted.version}"
            )
        if bundle.manifest_sha256 != wanted.manifest_sha256:
            raise verify.BadManifest("the bundle's manifest is not the one the desired state names")
        return bundle

    def _switch_to_installed(self, directory: Path, wanted: protocol.BundleRef, *, rollback_to: str | None) -> None:
        """Go to a version still on disk (usually ``previous``): no download, re-checked before use."""
        self._publish_state(phase="verifying", error=None)
        try:
            bundle = check_installed(directory, self.trust.keyring)
            self._publish_state(phase="validating")
            session = ModelSession.from_bundle(directory, settings=self.config.inference)
        except (verify.VerificationError, ModelLoadError, ManifestError) as exc:
            # The copy on disk is damaged: drop it and fetch the bundle again.
            log.warning("installed copy unusable", extra={"path": directory.name, "error": str(exc)})
            shutil.rmtree(directory, ignore_errors=True)
            self._update(wanted, rollback_to=rollback_to)
            return
        active = self.active
        older = active is not None and bundle.manifest.sequence < active.sequence
        if older and active is not None and bundle.manifest.model == active.name and rollback_to != wanted.version:
            # The same rule as for a download (verify.verify_bundle): back only by an explicit rollback.
            detail = f"{wanted.version} is older than the installed {active.version} and no rollback names it"
            self._event("validation_failed", version=wanted.version, reason="downgrade", detail=detail)
            self._fail("downgrade", detail)
        self._activate(Installed(directory, bundle), session, phase="rolled_back" if older else "active")

    def _activate(self, installed: Installed, session: ModelSession, *, phase: str) -> None:
        old = self.store.pointer(CURRENT)
        self.store.set_pointer(CURRENT, installed.directory)
        checkpoint("switching")
        if old is not None and old != installed.directory:
            self.store.set_pointer(PREVIOUS, old)
        previous = self.active
        self.holder.swap(session)
        self.active = installed
        self.store.prune()
        log.info("model active", extra={"model": installed.name, "version": installed.version, "phase": phase})
        self._event(
            "model_swap",
            name=installed.name,
            version=installed.version,
            sequence=installed.sequence,
            previous=previous.version if previous else None,
            phase=phase,
        )
        self._publish_state(phase=phase, error=None)

    # --- reporting ------------------------------------------------------------------------------

    def _fail(self, reason: str, detail: str, *, retry: bool = False) -> NoReturn:
        log.warning("update failed", extra={"reason": reason, "detail": detail})
        self._publish_state(phase="failed", error=detail if detail.startswith(reason) else f"{reason}: {detail}")
        raise UpdateError(reason, detail, retry=retry)

    def _publish_state(self, **fields: Any) -> None:
        runtime = self._runtime
        session = self.holder.session
        state: dict[str, Any] = {
            "model_name": None if self.holder.fallback else session.name,
            "model_version": session.version,
            "fallback": self.holder.fallback,
        }
        state.update(fields)
        if "error" in state and state["error"] is not None:
            state["error"] = str(state["error"])[:2000]
        if runtime is None:
            return
        runtime.model_version = state["model_version"]
        runtime.set_reported(**state)

    def _event(self, kind: str, **data: Any) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        if not self._online():
            # Events are not kept in the outbox; the few the updater raises matter (fallback engaged),
            # so they wait here for the link instead of being dropped at start-up.
            if len(self._pending_events) < 20:
                self._pending_events.append((kind, data))
            return
        runtime.event(kind, **data)

    def _online(self) -> bool:
        link = getattr(self._runtime, "link", None)
        return link is None or link.connected.is_set()

    def _send_pending_events(self) -> None:
        if self._pending_events and self._runtime is not None and self._online():
            pending, self._pending_events = self._pending_events, []
            for kind, data in pending:
                self._runtime.event(kind, **data)
