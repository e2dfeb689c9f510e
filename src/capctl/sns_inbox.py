"""A local stand-in for the alert topic, for the demo and tests: an SNS topic with an SQS queue
subscribed, so that what the alert check publishes can be read back.

It talks to moto: either a moto server (pass its ``endpoint``) or moto's in-process mock (no
endpoint; the caller is inside ``moto.mock_aws()`` with fake credentials in the environment).

    inbox = SnsInbox("http://127.0.0.1:5000")      # or SnsInbox() under mock_aws()
    os.environ["ALERT_TOPIC_ARN"] = inbox.topic_arn
    ...
    inbox.messages()        # [{"subject", "message", "attributes"}], each notice read once
"""

from __future__ import annotations

import json
from typing import Any

REGION = "eu-west-1"
TOPIC_NAME = "capacity-alerts"
QUEUE_NAME = "capacity-alerts-inbox"


class SnsInbox:
    """Creates the topic and the subscribed queue (both idempotent, as SNS and SQS make them)."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        region: str = REGION,
        topic_name: str = TOPIC_NAME,
        queue_name: str = QUEUE_NAME,
        wait_seconds: int = 0,
    ) -> None:
        import boto3  # off the import path of capctl's other commands

        options: dict[str, Any] = {"region_name": region}
        if endpoint is not None:
            # A moto server takes any credentials; the caller's real ones are never sent to it.
            options |= {"endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.sns = boto3.client("sns", **options)
        self.sqs = boto3.client("sqs", **options)
        self.wait_seconds = wait_seconds
        self.topic_arn: str = self.sns.create_topic(Name=topic_name)["TopicArn"]
        self.queue_url: str = self.sqs.create_queue(QueueName=queue_name)["QueueUrl"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"])

    def messages(self) -> list[dict[str, Any]]:
        """Every notice published since the last call, oldest first: its subject, message and
        message attributes (name -> value), read from the SNS envelopes and deleted."""
        found: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_seconds
            ).get("Messages", [])
            if not batch:
                return found
            for item in batch:
                envelope = json.loads(item["Body"])
                found.append(
                    {
                        "subject": envelope.get("Subject"),
                        "message": envelope.get("Message", ""),
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                    }
                )
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=item["ReceiptHandle"])
