"""A tiny local stand-in for a Slack incoming webhook, for the demo and tests.

It accepts ``POST`` of a JSON body on any path, keeps it, answers ``200 ok`` as Slack does, and
serves what it received at ``GET /messages``. Loopback only. Set ``status`` to another code to
play a failing receiver: it then answers that code and keeps nothing (it did not accept it).

    with WebhookSink() as sink:          # in-process, on a free port
        os.environ["ALERT_WEBHOOK_URL"] = sink.url
        ...
        sink.messages()                  # the JSON bodies accepted, oldest first
        sink.status = 500                # from now on, refuse

    python -m capctl.webhook_sink --port 8099 [--out messages.jsonl]   # standalone
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

MAX_BODY_BYTES = 1_000_000
HOST = "127.0.0.1"


class _Handler(BaseHTTPRequestHandler):
    server: _SinkServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            self._answer(400, "invalid_payload")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            self._answer(400, "invalid_payload")
            return
        status = self.server.status
        if status >= 300:
            self._answer(status, "refused")
            return
        self.server.record({"path": self.path, "body": body})
        self._answer(status, "ok")

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/messages":
            self._answer(404, "not_found")
            return
        payload = json.dumps(self.server.messages()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _answer(self, status: int, text: str) -> None:
        data = b"" if status == 204 else text.encode()  # 204 has no body
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the bodies are the record, not an access log."""


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, out: Path | None) -> None:
        super().__init__((HOST, port), _Handler)
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._out = out
        self.status = 200

    def record(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._messages.append(message)
            if self._out is not None:
                with self._out.open("a") as f:
                    f.write(json.dumps(message) + "\n")

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)


class WebhookSink:
    """The sink on a background thread; a context manager that stops it on exit."""

    def __init__(self, port: int = 0, out: Path | None = None, path: str = "/hooks/alerts", status: int = 200) -> None:
        self._server = _SinkServer(port, out)
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)
        self.path = path
        self.status = status

    @property
    def status(self) -> int:
        """The HTTP status every POST is answered with: 2xx accepts (and keeps) the message."""
        return self._server.status

    @status.setter
    def status(self, value: int) -> None:
        self._server.status = value

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def messages(self) -> list[dict[str, Any]]:
        """The JSON bodies accepted, oldest first."""
        return [m["body"] for m in self._server.messages()]

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capctl.webhook_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--out", type=Path, help="also append each message to this JSON-lines file")
    args = parser.parse_args(argv)
    sink = WebhookSink(args.port, args.out)
    print(f"webhook sink on {sink.url} (GET http://{HOST}:{sink.port}/messages lists them)", flush=True)
    try:
        sink._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sink._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
