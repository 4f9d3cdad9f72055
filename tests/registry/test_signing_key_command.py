"""manage.py signing_key create|list|rotate|retire, and what devices learn from a rotation."""

from __future__ import annotations

import stat
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from agent.kernel import verify
from registry.models import KeyringUpdate, SigningKey
from registry.trust import trust_store
from tests.registry.helpers import publish

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def key_dir(settings, tmp_path):
    settings.REGISTRY_KEY_DIR = tmp_path / "keys"
    return settings.REGISTRY_KEY_DIR


def run(*args: str) -> str:
    out = StringIO()
    call_command("signing_key", *args, stdout=out)
    return out.getvalue()


def test_create_keeps_the_private_key_in_a_0600_file_and_only_the_public_key_in_the_database(key_dir):
    output = run("create")

    key = SigningKey.objects.get()
    assert key.key_id in output
    assert stat.S_IMODE(key.private_key_path.stat().st_mode) == 0o600
    assert key.private_key_path.parent == key_dir
    assert b"PRIVATE KEY" in key.private_key_path.read_bytes()
    assert "PRIVATE" not in key.public_key and key.signer().key_id == key.key_id
    assert "private key here: yes" in run("list")


def test_the_api_lists_public_keys_and_nothing_private(token_client):
    run("create")

    response = token_client("read").get("/api/v1/signing-keys/")

    assert set(response.json()["results"][0]) == {"key_id", "public_key", "created_at", "retired_at"}
    assert b"PRIVATE" not in response.content


def test_rotate_announces_the_new_key_in_an_update_signed_by_the_current_one(
    token_client, classifier_onnx, metadata, tmp_path
):
    old = SigningKey.current()
    device_keyring = verify.Keyring.from_trust_store(trust_store())

    output = run("rotate", "--retire-old-after-days", "7")

    new = SigningKey.objects.exclude(pk=old.pk).get()
    update = KeyringUpdate.objects.get()
    assert new.key_id in output and update.signed_by == old.key_id
    learned = verify.apply_keyring_update(device_keyring, update.as_update())
    assert set(learned.keys) == {old.key_id, new.key_id}
    assert learned.keys[old.key_id].retired_at is not None
    # New bundles are signed by the new key, and devices that applied the update accept them.
    publish(token_client("publish"), classifier_onnx, metadata())
    assert SigningKey.current() == new
    from registry.models import Bundle

    assert Bundle.objects.get().key_id == new.key_id


def test_a_bundle_signed_by_a_retired_key_is_refused_after_its_retirement_date(
    token_client, classifier_onnx, metadata, tmp_path
):
    old = SigningKey.current()
    publish(token_client("publish"), classifier_onnx, metadata())
    from registry import variants
    from registry.models import Bundle

    bundle = Bundle.objects.get()
    run("rotate")
    at = timezone.now() + timedelta(hours=1)
    run("retire", old.key_id, "--at", at.isoformat())

    keyring = variants.keyring()
    assert keyring.keys[old.key_id].retired_at == at
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(bundle.file.read())
    assert verify.verify_bundle(archive, tmp_path / "before", keyring, agent_version="1.0.0", now=at - timedelta(1))
    with pytest.raises(verify.KeyRetired):
        verify.verify_bundle(archive, tmp_path / "after", keyring, agent_version="1.0.0", now=at)


def test_retiring_now_removes_the_key_from_the_trust_store_and_signs_with_another(tmp_path):
    old = SigningKey.current()
    run("rotate")

    output = run("retire", old.key_id)

    assert "signed by" in output
    assert old.key_id not in [k["key_id"] for k in trust_store()]
    assert KeyringUpdate.objects.first().signed_by != old.key_id


def test_retire_refuses_an_unknown_key_and_a_date_without_zone():
    key = SigningKey.current()

    with pytest.raises(CommandError, match="No signing key"):
        run("retire", "0" * 16)
    with pytest.raises(CommandError, match="zone"):
        run("retire", key.key_id, "--at", "2030-01-01T00:00:00")


def test_without_automatic_keys_a_missing_key_is_an_explicit_error(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.REGISTRY_AUTO_SIGNING_KEY = False

    with pytest.raises(ImproperlyConfigured, match="signing_key create"):
        SigningKey.current()


def test_only_one_process_creates_the_first_key_and_the_loser_leaves_no_file(key_dir):
    from django.db import IntegrityError

    first = SigningKey.current()

    with pytest.raises(IntegrityError):
        SigningKey.generate(automatic=True)

    assert SigningKey.current() == first
    assert [p.name for p in key_dir.iterdir()] == [f"{first.key_id}.pem"]


def test_after_the_first_key_is_retired_development_makes_another(key_dir):
    first = SigningKey.current()
    run("retire", first.key_id)

    assert SigningKey.current() != first
