"""Posting the lake's alerts to Slack (chat.postMessage through slack_sdk's WebClient).

The token comes from the settings (LAKE_SLACK_TOKEN) or, read once per process, from the Secrets
Manager secret LAKE_SLACK_TOKEN_SECRET_ID names. It is never logged: slack_sdk logs each request's
headers at DEBUG, Authorization included, so the client gets a logger that never emits DEBUG.
No Dagster here; lake_assets/alerts.py holds the sensors.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from lake_assets.core.settings import LakeSettings, SlackSettings

log = logging.getLogger(__name__)
_CLIENT_LOG = logging.getLogger("lake_assets.core.slack.client")
_CLIENT_LOG.setLevel(logging.INFO)  # no DEBUG records: they would carry the Authorization header


class SlackError(RuntimeError):
    """Slack refused a post or the token cannot be had; the message names the channel or secret, never the token."""


@functools.cache
def _secret_token(secret_id: str, region: str | None, endpoint_url: str | None) -> str:
    import boto3

    client = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url)
    try:
        value = client.get_secret_value(SecretId=secret_id).get("SecretString") or ""
    except Exception as e:  # noqa: BLE001 - botocore's ClientError and connection errors alike
        raise SlackError(f"Slack token secret {secret_id!r} (Secrets Manager): {type(e).__name__}") from None
    if not value.strip():
        raise SlackError(f"Slack token secret {secret_id!r} holds no SecretString")
    return value.strip()


def slack_token(settings: LakeSettings) -> str:
    slack = _slack(settings)
    if slack.token is not None:
        return slack.token.get_secret_value()
    assert slack.token_secret_id is not None  # SlackSettings exists only with one of them
    aws = settings.aws
    return _secret_token(slack.token_secret_id, aws.region if aws else None, aws.endpoint_url if aws else None)


def _slack(settings: LakeSettings) -> SlackSettings:
    if settings.slack is None:
        raise SlackError("no Slack token configured (LAKE_SLACK_TOKEN or LAKE_SLACK_TOKEN_SECRET_ID)")
    return settings.slack


def post_message(settings: LakeSettings, text: str, blocks: list[dict[str, Any]] | None = None) -> str:
    """Post to the configured channel; returns the message's ts. Raises SlackError when Slack says no."""
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    slack = _slack(settings)
    client = WebClient(token=slack_token(settings), base_url=slack.api_url, logger=_CLIENT_LOG, timeout=10)
    try:
        response = client.chat_postMessage(channel=slack.channel, text=text, blocks=blocks)
    except SlackApiError as e:
        raise SlackError(f"Slack refused a post to {slack.channel}: {e.response.get('error', 'unknown error')}") from None
    log.info("posted an alert to Slack channel %s", slack.channel)
    return str(response.get("ts", ""))
