"""The one way this library makes an S3 client: path-style addressing (SeaweedFS and custom
endpoints need it), explicit timeouts, and a purpose that picks retries and pool size."""
from __future__ import annotations

from typing import Any, Literal

import boto3
import botocore.session
from botocore.config import Config

Purpose = Literal["probe", "inventory"]


def s3_client(*, endpoint: str | None, access_key: str | None = None, secret_key: str | None = None,
              region: str | None = "us-east-1",
              purpose: Purpose = "probe", probe_timeout: float = 10) -> Any:
    """`probe`: readiness and triage calls under a deadline, so one attempt and short timeouts (a hung
    S3 must not hold a probe past it). `inventory`: long parallel listings, so 64 pooled connections,
    retries, and LastModified kept as text (botocore's per-object dateutil parse was half of a
    100,000-object listing's time; the inventory parses them all at once). A probe polled under a
    shorter deadline passes that deadline as `probe_timeout`. Without keys, boto3's own
    chain finds them (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as a service key gives them)."""
    if purpose == "probe":
        config = Config(connect_timeout=min(2, probe_timeout), read_timeout=probe_timeout, retries={"max_attempts": 1},
                        s3={"addressing_style": "path"})
        session = boto3.Session()
    else:
        config = Config(connect_timeout=10, read_timeout=60, max_pool_connections=64, retries={"max_attempts": 3},
                        s3={"addressing_style": "path"})
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        session = boto3.Session(botocore_session=core)
    return session.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key, region_name=region, config=config)
