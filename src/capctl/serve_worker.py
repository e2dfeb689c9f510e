"""One emulated Lambda instance of `capctl serve`.

A worker process imports its function's handler once (the Lambda init phase: settings, logger,
the lazily opened database connection) and then handles exactly one invocation at a time, sent
by the server over a pipe. Module state lives as long as the process, as in a warm Lambda
instance; the server kills the process on a timeout and replaces it, as Lambda does.

Messages, server → worker: ``(event, request_id, timeout_s)`` or ``None`` (exit).
Worker → server: ``("ready", pid, init_ms)`` or ``("init_error", message)`` once, then one
``("ok", result)`` or ``("error", exception type name)`` per invocation.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

# Libraries the handlers import, loaded once by the forkserver so that each instance's own init
# (importing functions/<name>/app.py) takes milliseconds. Handler modules themselves are not
# preloaded: their module state (settings, connection) must belong to one instance.
PRELOAD = (
    "capctl.serve_worker",
    "capctl.apigw",
    "capctl.handlers",
    "pydantic",
    "psycopg",
    "aws_lambda_powertools",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.event_handler.openapi.params",
    "aws_lambda_powertools.logging",
    "aws_lambda_powertools.metrics",
    "capacity.booking",
    "capacity.http",
    "capacity.models",
)


def _describe(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def worker_main(conn: Connection, function_name: str, function_logs: bool) -> None:
    """Entry point of an instance process (run by multiprocessing)."""
    # Ctrl-C reaches the whole process group; the server decides when instances stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The server's stdout carries only its ready line; function logs (Powertools JSON, EMF)
    # go to stderr, as `sam local` shows them, or nowhere.
    target = os.open(os.devnull, os.O_WRONLY) if not function_logs else 2
    os.dup2(target, 1)
    if not function_logs:
        os.dup2(target, 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    started = time.perf_counter()
    try:
        from capctl.apigw import LambdaContext
        from capctl.handlers import load_handler

        handler = load_handler(function_name).lambda_handler
    except BaseException as exc:
        conn.send(("init_error", _describe(exc)))
        conn.close()
        return
    try:
        conn.send(("ready", os.getpid(), round((time.perf_counter() - started) * 1000, 1)))
    except (EOFError, OSError):
        return  # the server stopped during this init

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            return
        event, request_id, timeout_s = message
        context = LambdaContext(function_name=function_name, timeout_s=timeout_s, aws_request_id=request_id)
        reply: tuple[str, Any]
        try:
            reply = ("ok", handler(event, context))
        except Exception as exc:
            # The type only: an exception's text can quote request data.
            print(
                f"[{function_name}] unhandled {type(exc).__name__} in request {request_id}", file=sys.stderr, flush=True
            )
            reply = ("error", type(exc).__name__)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
