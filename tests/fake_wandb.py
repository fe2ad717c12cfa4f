"""A stand-in W&B server on 127.0.0.1 for the failure and sweep tests, run as a child process.

It speaks what the W&B client ``WANDB_VERSION`` (wandb-core and the Python SDK) sends: the
GraphQL operations in ``KNOWN_OPS`` and file_stream uploads. Any other operation is answered
with a GraphQL error and logged as ``unknown``; ``FakeServer.unknown_ops`` names them, so a
test fails loudly, by name, when a new wandb version talks differently.

Sweeps (``--plan FILE``, a JSON list of parameter dicts): ``UpsertSweep`` registers a sweep;
an agent's ``CreateAgent`` registers it and each ``Heartbeat`` hands out the next planned trial
as a ``run`` command (when the agent runs none), ``stop`` for a run the test asked to stop
(``FakeServer.stop(run_id)``; that run's stop status also turns true, as the W&B UI's stop
button does: the file_stream answers ``stopped: true``, which wandb-core keeps and the SDK
polls), and ``exit`` once the plan is used up and nothing runs: what W&B's server does
for a finished sweep (wandb/wandb#3961: agents that never exit hold their GPUs).

Modes: ``ok`` (answers the few GraphQL calls wandb-core makes for a run and takes file_stream
uploads), ``500`` (every request fails), ``401`` (every request is unauthorized), ``hang``
(accepts and never answers). ``--die-on-stream N``: in ``ok`` mode the process exits
(``os._exit``: the kernel closes every socket, as when a server dies) when the N-th file_stream
upload arrives; wandb-core sends the first right after ``wandb.init``, so N=1 is a server that
dies once the run exists, before any history reached it. Each request is appended to ``--log``
as one JSON line.

    python tests/fake_wandb.py --mode ok --log /tmp/requests.jsonl   # prints the port
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENTITY = "fake-entity"
WANDB_VERSION = "0.31.0"  # the client this stand-in was written against (tests check it)
KNOWN_OPS = {
    "Viewer",
    "UpsertBucket",
    "ServerFeaturesQuery",
    "CreateRunFiles",
    "CreateArtifact",
    "CreateArtifactManifest",
    "UpdateArtifactManifest",
    "CreateArtifactFiles",
    "CommitArtifact",
    "UseArtifact",
    "ArtifactType",
    "OrganizationCoreWeaveOrganizationID",  # likewise
    "Run",  # wandb.Api().run(path): is this run id finished already?
    "GetDefaultEntity",  # wandb.Api's name for Viewer
    "RunResumeStatus",  # wandb.init(resume=...): no such run yet on this server
    # sweeps
    "UpsertSweep",
    "CreateAgent",
    "Heartbeat",
}


class Sweeps:
    """The sweep side of the stand-in: sweeps, agents, planned trials, stops."""

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self.plan = list(plan)
        self.handed = 0
        self.sweeps: dict[str, str] = {}
        self.stops: list[str] = []  # stop commands not yet handed out
        self.stopped: set[str] = set()  # runs whose stop status is true

    def answer(self, op: str, variables: dict[str, Any]) -> dict[str, Any]:
        if op == "UpsertSweep":
            sweep_id = f"sw{len(self.sweeps) + 1:04d}"
            self.sweeps[sweep_id] = variables.get("config") or ""
            project = {"id": "UHJvamVjdDox", "name": variables.get("projectName") or "p"}
            project["entity"] = {"id": "RW50aXR5OjE=", "name": ENTITY}
            sweep = {"name": sweep_id, "project": project}
            return {"upsertSweep": {"sweep": sweep, "configValidationWarnings": []}}
        if op == "CreateAgent":
            return {"createAgent": {"agent": {"id": "QWdlbnQ6MQ=="}}}
        if op == "Heartbeat":
            running = json.loads(variables.get("runState") or "{}")
            commands = self._next(running)
            agent = {"id": variables.get("id")}
            return {"agentHeartbeat": {"agent": agent, "commands": json.dumps(commands)}}
        raise KeyError(op)

    def _next(self, running: dict[str, Any]) -> list[dict[str, Any]]:
        if self.stops:
            return [{"type": "stop", "run_id": self.stops.pop(0)}]
        if running:
            return []
        if self.handed < len(self.plan):
            params = self.plan[self.handed]
            self.handed += 1
            args = {k: {"value": v} for k, v in params.items()}
            return [{"type": "run", "run_id": f"trial{self.handed:03d}", "args": args}]
        return [{"type": "exit"}]

    def stop(self, run_id: str) -> None:
        self.stops.append(run_id)
        self.stopped.add(run_id)


def _graphql_answer(
    base: str,
    op: str,
    variables: dict[str, Any],
    runs: dict[str, str] | None = None,
    steps: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    runs = runs if runs is not None else {}
    steps = steps if steps is not None else {}
    if op == "Run":  # wandb.Api().run(path): the runs this server has seen, with their state
        name = variables.get("name") or ""
        if name not in runs:
            return {"project": None}
        run = {"id": "UnVuOjE=", "name": name, "displayName": name, "state": runs[name]}
        run.update(projectId="1", config="{}", summaryMetrics="{}", systemMetrics="{}")
        # The history rows it received: their count and the last step, as W&B reports them.
        got = steps.get(name, [])
        keys = {"lastStep": max(got), "keys": {}} if got else None
        run.update(tags=[], historyLineCount=len(got), historyKeys=keys)
        run["user"] = {"name": "fake", "username": "fake"}
        return {"project": {"run": run}}
    if op == "RunResumeStatus":  # the run is new here: nothing to resume
        return {"model": None}
    if op in ("Viewer", "GetDefaultEntity"):  # wandb-core's and wandb.Api's names for it
        viewer = {"id": "VXNlcjox", "entity": ENTITY, "username": "fake", "email": "f@example.com"}
        return {"viewer": {**viewer, "flags": "{}", "teams": {"edges": []}}}
    if op == "UpsertBucket":
        name = variables.get("name") or "run"
        runs.setdefault(name, "running")
        project = {"id": "UHJvamVjdDox", "name": variables.get("project") or "p"}
        project["entity"] = {"id": "RW50aXR5OjE=", "name": ENTITY}
        bucket = {"id": "UnVuOjE=", "name": name, "displayName": variables.get("displayName")}
        bucket.update(description="", config="{}", sweepName=None, historyLineCount=0)
        return {"upsertBucket": {"bucket": {**bucket, "project": project}, "inserted": True}}
    if op == "ArtifactType":  # run.log_artifact asks whether the name has a type already
        return {"project": None}
    if op == "ServerFeaturesQuery":
        return {"serverInfo": {"features": []}}
    if op == "CreateRunFiles":
        files = [{"name": f, "uploadUrl": f"{base}/upload/{f}"} for f in variables["files"]]
        return {"createRunFiles": {"runID": "UnVuOjE=", "uploadHeaders": [], "files": files}}
    # The model artifact (tracking.Tracker.save_model): create, manifest, files, commit.
    artifact = {"id": "QXJ0aWZhY3Q6MQ==", "state": "PENDING", "digest": "fake"}
    if op == "CreateArtifact":
        artifact["artifactSequence"] = {"latestArtifact": None}
        return {"createArtifact": {"artifact": artifact}}
    if op in ("CreateArtifactManifest", "UpdateArtifactManifest"):
        upload = {"id": "RmlsZTox", "uploadUrl": f"{base}/upload/manifest", "uploadHeaders": []}
        key = op[0].lower() + op[1:]
        return {key: {"artifactManifest": {"id": "TWFuaWZlc3Q6MQ==", "file": upload}}}
    if op == "CreateArtifactFiles":
        wanted = variables["input"]["artifactFiles"]
        edges = [
            {
                "node": {
                    "storagePath": f"fake/{i}",
                    "uploadUrl": f"{base}/upload/artifact-{i}",
                    "uploadHeaders": [],
                    "uploadMultipartUrls": None,
                    "artifact": {"id": artifact["id"]},
                }
            }
            for i, _ in enumerate(wanted)
        ]
        return {"createArtifactFiles": {"files": {"edges": edges}}}
    if op in ("CommitArtifact", "UseArtifact"):
        return {op[0].lower() + op[1:]: {"artifact": artifact}}
    return {}


def serve(mode: str, log: Path, die_on_stream: int, plan: list[dict[str, Any]]) -> None:
    lock = threading.Lock()
    streams = {"n": 0}
    runs: dict[str, str] = {}  # run id -> state, as W&B reports it ("running", "finished")
    steps: dict[str, list[int]] = {}  # run id -> the history steps it received
    sweeps = Sweeps(plan)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PUT(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            entry: dict[str, Any] = {"method": self.command, "path": self.path, "t": time.time()}
            payload: Any = {}
            if self.path.startswith("/_fake/stop/"):  # the test's "stop" button
                run_id = self.path.rsplit("/", 1)[1]
                with lock:
                    sweeps.stop(run_id)
                entry["stop"] = run_id
            elif self.path.startswith("/graphql"):
                request = json.loads(body or b"{}")
                op = entry["op"] = request.get("operationName") or _op_name(request)
                base = f"http://{self.headers.get('Host')}"
                variables = request.get("variables") or {}
                entry["variables"] = {k: v for k, v in variables.items() if k in LOGGED_VARS}
                if op not in KNOWN_OPS:
                    entry["unknown"] = True
                    payload = {"errors": [{"message": f"fake_wandb: unknown operation {op}"}]}
                elif op in Sweeps.OPS:
                    with lock:
                        payload = {"data": sweeps.answer(op, variables)}
                else:
                    with lock:
                        payload = {"data": _graphql_answer(base, op, variables, runs, steps)}
            elif self.path.endswith("/file_stream"):
                stream = json.loads(body or b"{}")
                files = stream.get("files", {})
                rows = files.get("wandb-history.jsonl", {}).get("content", [])
                entry["history"] = [json.loads(row)["_step"] for row in rows]
                entry["run"] = self.path.split("/")[-2]
                with lock:
                    steps.setdefault(entry["run"], []).extend(entry["history"])
                if stream.get("complete"):  # the run's last upload: it ended, with this code
                    entry["exitcode"] = stream.get("exitcode")
                    with lock:
                        runs[entry["run"]] = "finished" if entry["exitcode"] == 0 else "failed"
                # The answer says whether the run should stop (the UI's stop button):
                # wandb-core keeps it as the run's stop status, which the SDK polls.
                with lock:
                    payload = {"exitcode": None, "limits": {}}
                    payload["stopped"] = entry["run"] in sweeps.stopped
            with lock, open(log, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
                streams["n"] += "history" in entry
                dying = 0 < die_on_stream <= streams["n"]
            if mode == "hang":
                time.sleep(3600)
                return
            if dying:
                os._exit(0)  # the server dies: every socket closes at once, nothing answers
            status = {"500": 500, "401": 401}.get(mode, 200)
            if status != 200:
                payload = {"errors": [{"message": f"fake server answers {status}"}]}
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, *args: object) -> None:
            return None  # clients that give up mid-request are what these tests are about

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


Sweeps.OPS = {"UpsertSweep", "CreateAgent", "Heartbeat"}  # type: ignore[attr-defined]
LOGGED_VARS = {"sweep", "name", "runState", "projectName", "entityName", "config"}


def _op_name(request: dict[str, Any]) -> str:
    """The operation's name from its text when the client sends no operationName."""
    words = str(request.get("query") or "").replace("(", " ").replace("{", " ").split()
    for i, word in enumerate(words[:-1]):
        if word in ("query", "mutation"):
            return words[i + 1]
    return "?"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SilentListener:
    """A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte: a
    proxy or server that hangs. ``connections`` counts what was accepted; ``first_bytes`` keeps
    what each client sent first (e.g. ``CONNECT host:443``), to name it in a failure."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.first_bytes: list[bytes] = []
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self._held.append(conn)
            conn.settimeout(2)
            try:
                self.first_bytes.append(conn.recv(200))
            except OSError:
                self.first_bytes.append(b"")

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[SilentListener]:
    listener = SilentListener()
    try:
        yield listener
    finally:
        listener.close()


class FakeServer:
    def __init__(self, proc: subprocess.Popen[str] | None, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def uploaded_steps(self) -> list[int]:
        return [step for r in self.requests() for step in r.get("history", [])]

    def unknown_ops(self) -> list[str]:
        """GraphQL operations this stand-in does not know: wandb's calls changed."""
        return sorted({r["op"] for r in self.requests() if r.get("unknown")})

    def ops(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r.get("op") == name]

    def exit_codes(self) -> dict[str, int]:
        """Each run's exit code as its final file_stream upload reported it."""
        return {r["run"]: r["exitcode"] for r in self.requests() if "exitcode" in r}

    def stop(self, run_id: str) -> None:
        """Press "stop" for ``run_id``: a ``stop`` command on the next heartbeat, and the run's
        stop status turns true."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/_fake/stop/{run_id}"), b"")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def fake_wandb(
    mode: str, tmp: Path, die_on_stream: int = 0, plan: list[dict[str, Any]] | None = None
) -> Iterator[FakeServer]:
    """``mode`` as above, or ``refuse`` for a closed port (no process at all); ``plan``: the
    trials a sweep's agents get, in order."""
    log = tmp / f"fake-wandb-{mode}.jsonl"
    if mode == "refuse":
        yield FakeServer(None, f"http://127.0.0.1:{closed_port()}", log)
        return
    args = ["--mode", mode, "--log", str(log), "--die-on-stream", str(die_on_stream)]
    if plan is not None:
        plan_file = tmp / "fake-wandb-plan.json"
        plan_file.write_text(json.dumps(plan))
        args += ["--plan", str(plan_file)]
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield FakeServer(proc, f"http://127.0.0.1:{port}", log)
    finally:
        proc.kill()
        proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ok", "500", "401", "hang"], required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--die-on-stream", type=int, default=0)
    parser.add_argument("--plan", type=Path, default=None)
    ns = parser.parse_args()
    serve(ns.mode, ns.log, ns.die_on_stream, json.loads(ns.plan.read_text()) if ns.plan else [])
