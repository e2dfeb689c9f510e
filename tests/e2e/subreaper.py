"""Run `capctl serve` (through `LocalApi`) under a child subreaper and report what it leaves behind.

``python -m tests.e2e.subreaper '<json>'`` with ``{"database_url", "env", "instances", "log_path",
"stop"}``; ``stop`` is ``"when_ready"`` (`LocalApi.stop` once it serves) or ``"while_starting"``
(SIGTERM as soon as its forkserver exists, while the instances are being launched).
This process marks itself PR_SET_CHILD_SUBREAPER, so anything `capctl serve` started and left
behind is reparented here when it exits, as to a PID 1 that does not reap orphans (a container):
alive or a zombie, it is then a child of this process, and nothing else can hide it. Prints one
JSON line: ``{"exit": serve's exit code, "stdout": what it printed, "instances": their pids,
"leftover": [{pid, state, cmdline}], "control": the pid of a deliberate orphan}``. Then kills and
reaps every leftover, so that the check itself leaves nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capctl.serve import LocalApi

PR_SET_CHILD_SUBREAPER = 36


def children(of: int | None = None) -> dict[int, dict[str, Any]]:
    """The children of a process (this one by default), alive or zombie, from /proc (their parent
    pid is field 4 of stat)."""
    parent = of or os.getpid()
    found: dict[int, dict[str, Any]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):  # it exited meanwhile
            continue
        if int(ppid) == parent:
            found[int(stat.parent.name)] = {"pid": int(stat.parent.name), "state": state, "cmdline": cmdline}
    return found


def reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            continue


def stop_while_starting(api: LocalApi) -> tuple[int, str]:
    """SIGTERM to `capctl serve` once its forkserver exists: the first instance is being launched."""
    env = {**os.environ, **api.env, "DATABASE_URL": str(api.database_url)}
    assert api.log_path is not None
    with api.log_path.open("ab") as log:
        serve = subprocess.Popen(api.command(), stdout=subprocess.PIPE, stderr=log, env=env, text=True)
    deadline = time.monotonic() + 60
    while not any("forkserver" in child["cmdline"] for child in children(of=serve.pid).values()):
        if time.monotonic() > deadline or serve.poll() is not None:
            raise SystemExit("capctl serve started no forkserver")
        time.sleep(0.005)
    serve.send_signal(signal.SIGTERM)
    stdout, _ = serve.communicate(timeout=60)
    return serve.returncode, stdout


def main() -> None:
    options = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")

    # A control: an orphan made on purpose must show up here, or this check could see nothing.
    subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    control = [pid for pid, child in children().items() if child["cmdline"] == "sleep 60"]
    reap(control)

    from capctl.serve import LocalApi

    api = LocalApi(
        database_url=options["database_url"],
        env=options["env"],
        instances=options["instances"],
        log_path=Path(options["log_path"]),
    )
    if options["stop"] == "when_ready":
        api.start()
        instances = [i["pid"] for i in api.health()["instances"]]
        code = api.stop()  # SIGTERM, then wait: serve itself is reaped here by Popen.wait
        stdout = ""
    else:
        code, stdout = stop_while_starting(api)
        instances = []
    # Its orphans were reparented here as it exited, before that wait returned: no sleep needed.
    leftover = sorted(children().values(), key=lambda child: child["pid"])
    print(
        json.dumps({"exit": code, "stdout": stdout, "instances": instances, "leftover": leftover, "control": control}),
        flush=True,
    )
    reap([child["pid"] for child in leftover])


if __name__ == "__main__":
    main()
