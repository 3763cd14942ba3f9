"""A mount whose blobs come from an S3 bucket (nydusd's `s3` backend, a v1 JSON config with a
blobcache), served on 127.0.0.1 by an object store that checks every signature with botocore."""

from __future__ import annotations

import json

import pytest

from tests.mountutil import read_every_file_through_a_mount, require_fuse
from tests.objectstore import KEY_ID, SECRET, ObjectStore, objects_of, s3_signature_ok


@pytest.mark.timeout(120)
def test_a_mount_reads_every_file_from_an_s3_bucket(sample_v6, tmp_path):
    require_fuse()
    img, src = sample_v6
    store = ObjectStore(objects_of(img, "/layers/nydus/"), lambda h: s3_signature_ok(h, "us-west-2"))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"device": {"backend": {"type": "s3", "config": {
        "scheme": "http", "endpoint": f"127.0.0.1:{store.port}", "region": "us-west-2",
        "bucket_name": "layers", "object_prefix": "nydus/", "access_key_id": KEY_ID,
        "access_key_secret": SECRET}}, "cache": {"type": "blobcache", "config": {
            "work_dir": str(tmp_path / "cache")}}}, "mode": "direct"}))
    try:
        log = read_every_file_through_a_mount(img, src, cfg, tmp_path)
        assert store.paths() and all(p.startswith("/layers/nydus/") for p in store.paths())
        assert "s3 backend" in log
        assert SECRET not in log  # the secret never reaches the log
    finally:
        store.stop()
