"""Shared helpers of the alert and roll-up tests: bookings and observability events written
straight to the database, and the fakes behind the ``topic`` (SNS via moto, read back through a
subscribed SQS queue) and ``webhook`` (an HTTP receiver on 127.0.0.1) fixtures of conftest."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import boto3
from moto import mock_aws

from tests.support import RESTAURANT_ID

REGION = "eu-west-1"
OTHER_ID = "99999999-8888-4777-8666-555555555555"
LONDON = ZoneInfo("Europe/London")
GUEST = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+44 20 7946 0999"}


def slot_date(days_ahead: int = 7) -> dt.date:
    return dt.datetime.now(LONDON).date() + dt.timedelta(days=days_ahead)


def insert_booking(
    conn: Any,
    *,
    restaurant_id: str = RESTAURANT_ID,
    date: dt.date,
    time: str = "19:00",
    party_size: int = 4,
    source: str = "web",
    status: str = "confirmed",
) -> str:
    booking_id = str(uuid.uuid4())
    conn.execute(
        """INSERT INTO bookings (id, restaurant_id, booking_date, booking_time, party_size, status, source,
                                 idempotency_key, tenant, guest_name, guest_email, guest_phone)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'tenant-a', %s, %s, %s)""",
        (
            booking_id,
            restaurant_id,
            date,
            time,
            party_size,
            status,
            source,
            f"k-{booking_id}",
            GUEST["name"],
            GUEST["email"],
            GUEST["phone"],
        ),
    )
    return booking_id


def overbook(conn: Any, *, restaurant_id: str = RESTAURANT_ID, date: dt.date, time: str = "19:00") -> list[str]:
    """24 confirmed covers in a 20-cover slot: six parties of four."""
    return [insert_booking(conn, restaurant_id=restaurant_id, date=date, time=time) for _ in range(6)]


def insert_event(
    conn: Any,
    event_type: str,
    *,
    restaurant_id: str = RESTAURANT_ID,
    at: dt.datetime | None = None,
    count: int = 1,
    **metadata: Any,
) -> None:
    meta = {
        "restaurantId": restaurant_id,
        "date": "2030-06-14",
        "time": "19:00",
        "attempts": 1,
        "source": "web",
        "partySize": 2,
        **metadata,
    }
    when = at or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for _ in range(count):
        conn.execute(
            "INSERT INTO observability_events (event_type, restaurant_id, occurred_at, metadata) VALUES (%s, %s, %s, %s)",
            (event_type, restaurant_id, when, json.dumps(meta)),
        )


@dataclass
class Topic:
    arn: str
    sqs: Any
    queue_url: str

    def messages(self) -> list[dict[str, Any]]:
        """Every notice published since the last call: Subject, Message, attributes."""
        found = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            batch = got.get("Messages", [])
            if not batch:
                return found
            for m in batch:
                envelope = json.loads(m["Body"])
                found.append(
                    {
                        "subject": envelope.get("Subject"),
                        "message": envelope["Message"],
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                    }
                )
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


@contextmanager
def sns_topic() -> Iterator[Topic]:
    """A moto SNS topic with an SQS queue subscribed; the caller sets fake AWS credentials."""
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        arn = sns.create_topic(Name="capacity-alerts")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
        yield Topic(arn, sqs, queue_url)


@dataclass
class Receiver:
    url: str
    status: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A Slack-style receiver on 127.0.0.1 answering ``receiver.status``."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            payload = json.loads(self.rfile.read(length))
            if receiver.status < 300:
                receiver.received.append(payload)
            self.send_response(receiver.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
