"""A moto S3 server on 127.0.0.1 with one fresh bucket, for the S3 tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer


@contextmanager
def moto_s3(bucket_prefix: str) -> Iterator[tuple[str, Any, str]]:
    """Run a moto S3 server on loopback; yield (endpoint, boto3 client, bucket).

    The bucket (versioned or not) is emptied and deleted, and the server
    stopped, on exit.
    """
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(var, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        bucket = f"{bucket_prefix}-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        yield endpoint, client, bucket
        # Every version of every object, for buckets that were made versioned.
        listed = client.list_object_versions(Bucket=bucket)
        for obj in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
            client.delete_object(
                Bucket=bucket, Key=obj["Key"], VersionId=obj["VersionId"]
            )
        client.delete_bucket(Bucket=bucket)
    finally:
        server.stop()
