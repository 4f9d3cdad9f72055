"""The settings production adds: URLs with passwords from files, bundles in S3-compatible storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT

READ = """
import json
from django.conf import settings
import django
django.setup()
from django.core.files.storage import storages
default_storage = storages["default"]
db = settings.DATABASES["default"]
print(json.dumps({
    "db": [db["NAME"], db["PASSWORD"], db["HOST"]],
    "celery": settings.CELERY_BROKER_URL,
    "storage": type(default_storage).__module__ + "." + type(default_storage).__name__,
    "s3": {k: getattr(default_storage, k, None) for k in ("bucket_name", "endpoint_url", "secret_key", "location")},
}))
"""


def settings_with(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "S3_", "STORAGE_", "EDGEFLEET_", "DJANGO_"))
    }
    clean.update({"EDGEFLEET_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    return subprocess.run([sys.executable, "-c", READ], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)


def test_database_and_task_queue_urls_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "database_url").write_text("postgres://fleet:s3cr3t-pw@db.internal:5432/edgefleet\n")
    (tmp_path / "celery_broker_url").write_text("redis://:queue-pw@redis.internal:6379/0\n")
    result = settings_with(
        tmp_path,
        DATABASE_URL_FILE=str(tmp_path / "database_url"),
        CELERY_BROKER_URL_FILE=str(tmp_path / "celery_broker_url"),
    )
    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    assert read["db"] == ["edgefleet", "s3cr3t-pw", "db.internal"]
    assert read["celery"] == "redis://:queue-pw@redis.internal:6379/0"


def test_a_bad_url_from_a_file_is_named_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "database_url").write_text("mysql://fleet:s3cr3t-pw@db.internal/edgefleet\n")
    result = settings_with(tmp_path, DATABASE_URL_FILE=str(tmp_path / "database_url"))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "DATABASE_URL" in result.stderr
    assert "s3cr3t-pw" not in result.stderr


def test_bundles_go_to_an_s3_bucket_when_configured(tmp_path: Path) -> None:
    (tmp_path / "s3_secret").write_text("minio-secret\n")
    result = settings_with(
        tmp_path,
        STORAGE_BACKEND="s3",
        S3_BUCKET="edgefleet-bundles",
        S3_ENDPOINT_URL="http://minio:9000",
        S3_ACCESS_KEY_ID="edgefleet",
        S3_SECRET_ACCESS_KEY_FILE=str(tmp_path / "s3_secret"),
        S3_PREFIX="prod",
    )
    assert result.returncode == 0, result.stderr
    read = json.loads(result.stdout)
    assert read["storage"] == "storages.backends.s3.S3Storage"
    assert read["s3"] == {
        "bucket_name": "edgefleet-bundles",
        "endpoint_url": "http://minio:9000",
        "secret_key": "minio-secret",
        "location": "prod",
    }


def test_s3_storage_without_a_bucket_stops_the_start(tmp_path: Path) -> None:
    result = settings_with(tmp_path, STORAGE_BACKEND="s3")
    assert result.returncode != 0 and "S3_BUCKET" in result.stderr


def test_the_default_storage_is_the_media_folder(tmp_path: Path) -> None:
    result = settings_with(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["storage"] == "django.core.files.storage.filesystem.FileSystemStorage"
