"""`capctl serve`: a local API Gateway (REST API) in front of the real Lambda handlers.

Each HTTP request becomes the proxy event API Gateway would send (`capctl.apigw.rest_event`) and
is handled by one of ``--instances`` worker processes (`capctl.serve_worker`). As in Lambda, an
instance keeps its module state (settings, its one database connection) between requests and
handles exactly one request at a time; when every instance is busy, requests queue. An instance
that crashes is replaced (the request gets 502); one that overruns ``--timeout`` is killed and
replaced (504). In front of the handler, the gateway's own checks answer problem+json without
invoking it: API keys (403 ``forbidden``), a usage plan's token bucket per key (429
``rate_limited`` with ``Retry-After``), the request body limit (413 ``payload_too_large``) and a
path no route matches, such as one holding a control character (404 ``not_found``).

Not part of the API: ``GET /__health`` answers 200 with per-instance JSON once every instance
has finished its init (503 before), and every response carries ``X-Local-Instance`` (the
instance that handled it) and ``x-amzn-RequestId``. stdout gets one line,
``serving create_booking on http://HOST:PORT with K instances``, when the server is ready
(``--port 0`` picks a free port; read it from that line). stderr gets one access-log line per
request (never a body) and the functions' own logs.

Python API, for tests, the demo and the load test::

    with LocalApi(database_url=url, instances=4, api_keys=["k1"]) as api:
        urllib.request.urlopen(api.base_url + "/restaurants/…/availability?date=…")
        api.health()  # the /__health JSON

``LocalApi`` runs ``python -m capctl.cli serve --port 0 …`` in a subprocess, waits for the
ready line and stops it with SIGTERM on exit; its stderr goes to ``log_path`` (by default a
temporary file, removed on stop; ``api.log_text()`` reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import multiprocessing
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_ready
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from capacity.outcomes import PROBLEM_CONTENT_TYPE, ProblemCode, problem_body
from capctl.apigw import response_body, response_headers, rest_event
from capctl.errors import UserError
from capctl.procs import child_pids
from capctl.serve_worker import PRELOAD, worker_main

if TYPE_CHECKING:
    from aiohttp import web  # imported when serving: every capctl command imports this module

HTTP_FUNCTIONS = ("create_booking",)
READY_LINE = re.compile(r"^serving (?P<function>\S+) on (?P<url>http://\S+) with (?P<instances>\d+) instances?$")
INIT_TIMEOUT_S = 60.0
STOP_GRACE_S = 1.0
INSTANCE_HEADER = "X-Local-Instance"
REQUEST_ID_HEADER = "x-amzn-RequestId"


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port, shown on the ready line)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--function", default="create_booking", choices=HTTP_FUNCTIONS, help="the function to serve")
    parser.add_argument(
        "--instances",
        type=int,
        default=2,
        metavar="K",
        help="concurrent Lambda instances, each one request at a time (default 2)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        dest="api_keys",
        metavar="KEY",
        help="accept this x-api-key (repeatable); with none given, keys are not checked",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="usage plan: steady requests per second per API key (default: no throttling)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="B",
        help="usage plan: burst size per API key (default: ceil(R), at least 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="function timeout; an instance that overruns it is killed and the request gets 504",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=10240,
        metavar="N",
        help="largest accepted request body (default 10240); larger gets 413",
    )
    parser.add_argument(
        "--function-logs",
        choices=("stderr", "off"),
        default="stderr",
        help="where the functions' own log lines go (default stderr)",
    )


@dataclass(frozen=True)
class Options:
    function: str = "create_booking"
    host: str = "127.0.0.1"
    port: int = 0
    instances: int = 2
    api_keys: tuple[str, ...] = ()
    rate: float | None = None
    burst: int | None = None
    timeout_s: float = 10.0
    max_body_bytes: int = 10240
    function_logs: bool = True


def _options(args: argparse.Namespace) -> Options:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, not {args.port}")
    if not 1 <= args.instances <= 64:
        raise UserError(f"--instances must be 1-64, not {args.instances}")
    if args.timeout <= 0:
        raise UserError("--timeout must be a positive number of seconds")
    if args.max_body_bytes < 0:
        raise UserError("--max-body-bytes must not be negative")
    if args.burst is not None and args.rate is None:
        raise UserError("--burst needs --rate")
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise UserError("--rate must be a positive number of requests per second")
    burst = args.burst
    if args.rate is not None and burst is None:
        burst = max(1, math.ceil(args.rate))
    if burst is not None and burst < 1:
        raise UserError("--burst must be at least 1")
    for key in args.api_keys:
        if not re.fullmatch(r"[\x21-\x7e]{1,128}", key):
            raise UserError("--api-key must be 1-128 visible ASCII characters")
    return Options(
        function=args.function,
        host=args.host,
        port=args.port,
        instances=args.instances,
        api_keys=tuple(args.api_keys),
        rate=args.rate,
        burst=burst,
        timeout_s=args.timeout,
        max_body_bytes=args.max_body_bytes,
        function_logs=args.function_logs == "stderr",
    )


def run(args: argparse.Namespace, command: str) -> int:
    options = _options(args)
    from capctl import database

    # Instances inherit this environment, as a function inherits its configuration.
    os.environ["DATABASE_URL"] = str(database.database_url())
    return asyncio.run(serve(options))


# --------------------------------------------------------------------------- instances


class InitError(Exception):
    """An instance could not finish its init phase (the handler failed to import)."""


@dataclass
class Instance:
    id: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    pid: int = 0
    init_ms: float = 0.0
    invocations: int = 0
    in_flight: int = 0
    max_concurrency: int = 0

    def alive(self) -> bool:
        return self.process.is_alive()

    def wait_ready(self, timeout_s: float) -> None:
        """Blocking: wait for the worker's init to finish."""
        if not wait_for_ready([self.conn, self.process.sentinel], timeout_s):
            raise InitError(f"init did not finish within {timeout_s:.0f} s")
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise InitError(f"instance exited during init (exit code {self.process.exitcode})") from None
        if message[0] != "ready":
            raise InitError(message[1])
        _, self.pid, self.init_ms = message

    def invoke(self, event: dict[str, Any], request_id: str, timeout_s: float) -> tuple[str, Any]:
        """Blocking: one invocation. ``("ok", result)``, ``("error", type)``, ``("timeout", None)``
        or ``("crashed", exit code)``."""
        try:
            self.conn.send((event, request_id, timeout_s))
            ready = wait_for_ready([self.conn, self.process.sentinel], timeout_s)
            if self.conn in ready:
                kind, payload = self.conn.recv()
                return str(kind), payload
        except (EOFError, OSError):
            pass
        else:
            if not ready:
                return "timeout", None
        self.process.join(1)
        return "crashed", self.process.exitcode

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()  # SIGKILL, as Lambda ends a timed-out instance
        self.process.join(5)
        self.conn.close()

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "busy": self.in_flight > 0,
            "invocations": self.invocations,
            "maxConcurrency": self.max_concurrency,
            "initMs": self.init_ms,
        }


@dataclass
class Dispatch:
    instance_id: int
    kind: str  # ok | error | timeout | crashed | stopping
    payload: Any


class Pool:
    """K instances; an idle queue hands each request one instance that is doing nothing else."""

    def __init__(self, options: Options, executor: ThreadPoolExecutor) -> None:
        self.options = options
        self.executor = executor
        # Fresh processes, never fork(): the server's threads and event loop stay out of instances.
        # The forkserver imports the libraries once, so K instances start in well under a second.
        self.ctx: multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(list(PRELOAD))
        else:
            self.ctx = multiprocessing.get_context("spawn")
        self.idle: asyncio.Queue[Instance | None] = asyncio.Queue()  # None: the server is stopping
        self.instances: dict[int, Instance] = {}
        self.retired: list[Instance] = []
        self.launched: list[Instance] = []  # every one ever started, serving or not: close stops them all
        self.ids = itertools.count(1)
        self.ready = False
        self.closing = False
        self.waiting = 0
        self.replacements: set[asyncio.Task[None]] = set()
        self.lock = threading.Lock()  # Process.start() of one context, one thread at a time
        self.children_before = child_pids()  # not ours to stop at close

    def _launch(self) -> Instance:
        parent_end, child_end = self.ctx.Pipe()
        process = self.ctx.Process(
            target=worker_main,
            args=(child_end, self.options.function, self.options.function_logs),
            name="capctl-serve-instance",
            daemon=True,
        )
        with self.lock:
            if self.closing:  # a launch that began before the stop (its caller may be cancelled)
                parent_end.close()
                child_end.close()
                raise InitError("the server is stopping")
            process.start()
            instance = Instance(id=next(self.ids), process=process, conn=parent_end)
            self.launched.append(instance)
        child_end.close()  # so the instance's death reads as EOF here
        return instance

    def _start_one(self) -> Instance:
        instance = self._launch()
        try:
            instance.wait_ready(INIT_TIMEOUT_S)
        except InitError:
            instance.kill()
            raise
        return instance

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        launched: list[Instance] = []
        try:
            # One at a time (the first also starts the forkserver, which imports PRELOAD once);
            # their inits then run in parallel.
            for _ in range(self.options.instances):
                launched.append(await loop.run_in_executor(self.executor, self._launch))
            await asyncio.gather(*(loop.run_in_executor(self.executor, i.wait_ready, INIT_TIMEOUT_S) for i in launched))
        except BaseException:
            for instance in launched:
                instance.kill()
            raise
        for instance in launched:
            self.instances[instance.id] = instance
            self.idle.put_nowait(instance)
        self.ready = True

    async def invoke(self, event: dict[str, Any], request_id: str) -> Dispatch:
        # Shielded: a client that hangs up must not return a still-busy instance to the pool.
        return await asyncio.shield(self._invoke(event, request_id))

    async def _invoke(self, event: dict[str, Any], request_id: str) -> Dispatch:
        self.waiting += 1
        try:
            while True:
                instance = await self.idle.get()
                if instance is None or self.closing:
                    return Dispatch(0, "stopping", None)
                if instance.alive():
                    break
                self._replace(instance)  # died while idle: the request goes to another instance
        finally:
            self.waiting -= 1
        instance.in_flight += 1
        instance.max_concurrency = max(instance.max_concurrency, instance.in_flight)
        instance.invocations += 1
        try:
            kind, payload = await asyncio.get_running_loop().run_in_executor(
                self.executor, instance.invoke, event, request_id, self.options.timeout_s
            )
        except Exception as exc:  # e.g. an event that cannot be sent: the instance is in an unknown state
            kind, payload = "crashed", type(exc).__name__
        finally:
            instance.in_flight -= 1
        if self.closing:
            return Dispatch(instance.id, "stopping", None)
        if kind in ("ok", "error"):
            self.idle.put_nowait(instance)
        else:
            if kind == "timeout":
                _log(f"instance {instance.id} timed out after {self.options.timeout_s:g} s in request {request_id}")
            else:
                _log(f"instance {instance.id} crashed (exit code {payload}) in request {request_id}")
            self._replace(instance)
        return Dispatch(instance.id, kind, payload)

    def _replace(self, instance: Instance) -> None:
        self.instances.pop(instance.id, None)
        self.retired.append(instance)
        if self.closing:
            instance.kill()
            return
        task = asyncio.get_running_loop().create_task(self._replacement(instance))
        self.replacements.add(task)
        task.add_done_callback(self.replacements.discard)

    async def _replacement(self, old: Instance) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, old.kill)
        delay = 0.5
        while not self.closing:
            try:
                new = await loop.run_in_executor(self.executor, self._start_one)
            except InitError as exc:
                _log(f"instance replacing {old.id} failed to start: {exc}; retrying in {delay:.1f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.closing:
                new.kill()
                return
            self.instances[new.id] = new
            self.idle.put_nowait(new)
            _log(f"instance {new.id} (pid {new.pid}) replaced instance {old.id}")
            return

    def health(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready and not self.closing else ("stopping" if self.closing else "starting"),
            "function": self.options.function,
            "instances": [i.stats() for i in self.instances.values()],
            "retired": [i.stats() for i in self.retired],
            "idle": self.idle.qsize(),
            "queued": self.waiting,
        }

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the instances to finish the requests they are handling."""
        deadline = time.monotonic() + grace_s
        while any(i.in_flight for i in self.instances.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.closing = True
        for task in list(self.replacements):
            task.cancel()
        for _ in range(self.waiting):
            self.idle.put_nowait(None)  # wakes each queued request, to be answered 503
        everyone = list(self.instances.values())
        for instance in everyone:
            if instance.in_flight == 0:
                with contextlib.suppress(OSError):
                    instance.conn.send(None)  # an idle instance exits on its own
        deadline = time.monotonic() + 1.0
        for instance in everyone:
            if instance.in_flight == 0:
                instance.process.join(max(0.0, deadline - time.monotonic()))
            instance.kill()
        with self.lock:  # closing is set: no instance is launched after this
            launched = list(self.launched)
        for instance in launched:
            instance.kill()  # e.g. launched while the start was being cancelled, or replacing one
        self._reap_helpers(launched)

    def _reap_helpers(self, instances: list[Instance]) -> None:
        """Stop and reap the processes multiprocessing started for the instances: the forkserver
        and its resource tracker. They exit on their own only once this process has exited (when
        their pipes from it close), as orphans: where PID 1 does not reap them (a container), they
        would stay as zombies. Nothing is registered with the tracker (pipes are not tracked
        resources), and it ignores SIGTERM, hence SIGKILL; an instance is Instance.kill's job."""
        mine = {instance.process.pid for instance in instances}
        for pid in sorted(child_pids() - self.children_before - mine):
            # Our own unreaped child: its pid cannot have been reused.
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


# --------------------------------------------------------------------------- gateway


class TokenBucket:
    """A usage plan's throttle for one API key: ``rate`` tokens a second, ``burst`` at most."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when the request may pass, else the seconds until a token is due."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def api_key_id(api_key: str) -> str:
    """A stable, non-secret id for an API key, standing in for API Gateway's key id."""
    return "local-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


Reply = tuple[int, list[tuple[str, str]], bytes]


def _problem(
    code: ProblemCode, detail: str, *, request_id: str | None = None, headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    """The gateway's own answer, with the request id as ``instance`` as the function's answers have."""
    body = problem_body(code, detail, instance=request_id)
    return int(body["status"]), [("Content-Type", PROBLEM_CONTENT_TYPE), *headers], json.dumps(body).encode()


class Gateway:
    def __init__(self, options: Options, pool: Pool) -> None:
        self.options = options
        self.pool = pool
        self.buckets: dict[str, TokenBucket] = {}

    async def health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        health = self.pool.health()
        return web.json_response(health, status=200 if health["status"] == "ready" else 503)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web
        from multidict import CIMultiDict

        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        instance: int | None = None
        try:
            status, headers, body, instance = await self._respond(request, request_id)
        except Exception as exc:  # a bug here must still answer like a gateway, without a traceback
            _log(f"gateway error {type(exc).__name__} in request {request_id}")
            status, headers, body = _problem(
                ProblemCode.INTERNAL_ERROR, "The local gateway failed.", request_id=request_id
            )
        out = CIMultiDict(headers)
        out[REQUEST_ID_HEADER] = request_id
        if instance is not None:
            out[INSTANCE_HEADER] = str(instance)
        ms = (time.perf_counter() - started) * 1000
        # Method, path, status, time, instance, request id: never a body or a query (guest data).
        _log(f"{request.method} {request.path} {status} {ms:.1f}ms instance={instance or '-'} request={request_id}")
        return web.Response(status=status, headers=out, body=body)

    async def _respond(
        self, request: web.Request, request_id: str
    ) -> tuple[int, list[tuple[str, str]], bytes, int | None]:
        api_key = request.headers.get("x-api-key")
        if self.options.api_keys and not (
            api_key is not None and any(hmac.compare_digest(api_key, k) for k in self.options.api_keys)
        ):
            return (
                *_problem(ProblemCode.FORBIDDEN, "A valid x-api-key header is required.", request_id=request_id),
                None,
            )
        if self.options.rate is not None and self.options.burst is not None:
            bucket = self.buckets.setdefault(api_key or "", TokenBucket(self.options.rate, self.options.burst))
            wait_s = bucket.take()
            if wait_s > 0:
                retry_after = str(max(1, math.ceil(wait_s)))
                return (
                    *_problem(
                        ProblemCode.RATE_LIMITED,
                        "The usage plan's request rate was exceeded.",
                        request_id=request_id,
                        headers=[("Retry-After", retry_after)],
                    ),
                    None,
                )
        body = await self._read_body(request)
        if body is None:
            return (
                *_problem(
                    ProblemCode.PAYLOAD_TOO_LARGE,
                    f"The request body exceeds {self.options.max_body_bytes} bytes.",
                    request_id=request_id,
                ),
                None,
            )
        event = rest_event(
            request.method,
            request.path,
            headers=list(request.headers.items()),
            query=list(request.query.items()),
            body=body,
            api_key=api_key,
            api_key_id=api_key_id(api_key) if api_key else None,
            source_ip=request.remote or "127.0.0.1",
            request_id=request_id,
        )
        dispatch = await self.pool.invoke(event, request_id)
        # Anything but a proxy result is API Gateway's "malformed Lambda proxy response": a 502.
        if dispatch.kind == "ok" and isinstance(dispatch.payload, Mapping) and "statusCode" in dispatch.payload:
            result: Mapping[str, Any] = dispatch.payload
            return (
                int(result.get("statusCode", 200)),
                response_headers(result),
                response_body(result),
                dispatch.instance_id,
            )
        if dispatch.kind == "stopping":
            return (
                *_problem(
                    ProblemCode.SERVICE_UNAVAILABLE,
                    "The local API is stopping.",
                    request_id=request_id,
                    headers=[("Retry-After", "1")],
                ),
                dispatch.instance_id or None,
            )
        if dispatch.kind == "timeout":
            detail = f"The function did not answer within {self.options.timeout_s:g} s."
            return (*_problem(ProblemCode.GATEWAY_TIMEOUT, detail, request_id=request_id), dispatch.instance_id)
        what = "crashed" if dispatch.kind == "crashed" else "failed"
        return (
            *_problem(
                ProblemCode.BAD_GATEWAY, f"The function {what} while handling the request.", request_id=request_id
            ),
            dispatch.instance_id,
        )

    async def _read_body(self, request: web.Request) -> bytes | None:
        limit = self.options.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def _log(line: str) -> None:
    print(f"capctl serve: {line}", file=sys.stderr, flush=True)


def _printable(path: str) -> str:
    """The path for the access log: control characters escaped, so a line stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


async def _problem_answers(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (a path no route matches, e.g. one holding a newline) answered as
    problem+json like every other answer of the API, never as text/plain."""
    from aiohttp import web

    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: ProblemCode.NOT_FOUND, 405: ProblemCode.METHOD_NOT_ALLOWED}.get(exc.status)
        if code is None:
            raise
        status, headers, body = _problem(code, "No resource matches the request path.")
        _log(f"{request.method} {_printable(request.path)} {status} instance=-")
        return web.Response(status=status, headers=headers, body=body)
    return response


async def serve(options: Options) -> int:
    from aiohttp import web

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    executor = ThreadPoolExecutor(max_workers=options.instances + 4, thread_name_prefix="capctl-serve")
    pool = Pool(options, executor)
    gateway = Gateway(options, pool)
    app = web.Application(middlewares=[web.middleware(_problem_answers)])
    app.router.add_get("/__health", gateway.health)
    app.router.add_route("*", "/{path:.*}", gateway.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        try:
            await site.start()
        except socket.gaierror:
            raise UserError(f"cannot listen on {options.host}:{options.port}: the host name does not resolve") from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise UserError(f"cannot listen on {options.host}:{options.port}: {reason}") from None
        port = _bound_port(runner, options.port)
        starting = asyncio.ensure_future(pool.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            return 0
        try:
            starting.result()
        except InitError as exc:
            raise UserError(f"{options.function} failed to initialise: {exc}") from None
        print(
            f"serving {options.function} on http://{options.host}:{port} with {options.instances} "
            f"instance{'s' if options.instances != 1 else ''}",
            flush=True,
        )
        await stopping
        _log("stopping")
        return 0
    finally:
        # No new connections; requests in flight get a moment to finish, then whatever is still
        # running or queued is answered 503 and the instances are stopped.
        for tcp_site in list(runner.sites):
            await tcp_site.stop()
        await pool.drain(STOP_GRACE_S)
        pool.close()
        await runner.cleanup()
        executor.shutdown(wait=False, cancel_futures=True)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


# --------------------------------------------------------------------------- Python API


@dataclass
class LocalApi:
    """`capctl serve` in a subprocess: ``with LocalApi(...) as api: api.base_url``."""

    database_url: str | None = None
    instances: int = 2
    api_keys: Sequence[str] = ()
    rate: float | None = None
    burst: int | None = None
    timeout_s: float | None = None
    max_body_bytes: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    function_logs: bool = True
    startup_timeout_s: float = 60.0
    base_url: str = field(default="", init=False)
    process: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _temporary_log: Path | None = field(default=None, init=False, repr=False)

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "capctl.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--instances",
            str(self.instances),
        ]
        for key in self.api_keys:
            cmd += ["--api-key", key]
        if self.rate is not None:
            cmd += ["--rate", str(self.rate)]
        if self.burst is not None:
            cmd += ["--burst", str(self.burst)]
        if self.timeout_s is not None:
            cmd += ["--timeout", str(self.timeout_s)]
        if self.max_body_bytes is not None:
            cmd += ["--max-body-bytes", str(self.max_body_bytes)]
        if not self.function_logs:
            cmd += ["--function-logs", "off"]
        return cmd

    def start(self) -> str:
        env = {**os.environ, **self.env}
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="capctl-serve-", suffix=".log")
            os.close(handle)
            self.log_path = self._temporary_log = Path(name)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
                self.command(), stdout=subprocess.PIPE, stderr=log, env=env, text=True
            )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_drain, args=(self.process, lines), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
                problem = f"was not ready within {self.startup_timeout_s:g} s"
            else:
                problem = "exited during start" if line is None else ""
            if problem:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"capctl serve {problem}: {tail}")
            assert line is not None
            match = READY_LINE.match(line.strip())
            if match:
                self.base_url = match["url"]
                return self.base_url

    def stop(self) -> int | None:
        """SIGTERM, then wait; returns the server's exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._temporary_log is not None:
            self._temporary_log.unlink(missing_ok=True)
            self.log_path = self._temporary_log = None
        return self.process.returncode

    def health(self) -> dict[str, Any]:
        """The /__health JSON (also while the server answers 503)."""
        return health(self.base_url)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def _log_tail(self) -> str:
        tail = [line for line in self.log_text().splitlines() if line.strip()][-5:]
        return " | ".join(tail) or "(no output)"

    def __enter__(self) -> LocalApi:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# Local URLs only: never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health(base_url: str, timeout_s: float = 10) -> dict[str, Any]:
    """A running `capctl serve`'s /__health JSON (also while it answers 503: starting, stopping)."""
    try:
        with _DIRECT.open(base_url.rstrip("/") + "/__health", timeout=timeout_s) as response:
            data: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        data = json.load(exc)
    return data


def _drain(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)
