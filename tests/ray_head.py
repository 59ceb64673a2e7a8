"""A Ray cluster of the tests' own on loopback: a head (`ray start --head --block`, its own ports and
temp folder, token authentication, dashboard), and further raylets joined to it to lose on purpose.

The tests that need a cluster share one head per session (conftest.ray_head). Its address file is
`TEMP/ray/ray_current_cluster`, where a plain `ray.init()` looks only when RAY_TMPDIR is TEMP, so
nothing else on the machine joins it unless a test does that on purpose. Teardown ends the head's
and the nodes' process groups, never `ray stop` (which ends every Ray process of the machine,
other tests' and other users' included), and any process still naming one of the head's folders.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

# Ray's health checks of a node, made frequent so that a node killed by a test is declared dead
# within a few seconds (the defaults take about 30).
HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                 "RAY_health_check_failure_threshold": "4"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent():
    """A Ray process group gets SIGTERM (and stops its processes) if the test process dies without teardown."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _end_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Node:
    """A raylet joined to the head, in a process group of its own; kill() loses it as a crashed machine would."""

    def __init__(self, process: subprocess.Popen, node_id: str):
        self.process, self.node_id = process, node_id

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Head:
    def __init__(self, dashboard: int, gcs: str, env: dict, token: str, temp: Path):
        self.address, self.gcs, self.env, self.temp = f"http://127.0.0.1:{dashboard}", gcs, env, temp
        self.folders = [temp]  # processes naming these are ours: ended at teardown if still there
        self.nodes: list[Node] = []
        from ray.job_submission import JobSubmissionClient

        self.headers = {"Authorization": f"Bearer {token}"}
        self.client = JobSubmissionClient(self.address, headers=self.headers)

    def wait_for_job_agent(self, deadline: float) -> None:
        """Returns once the head's job agent runs a job. The dashboard answers before its agent has
        registered, and refuses a job meanwhile ("No available agent to submit job") after waiting only
        10 s: on a busy machine the agent can take longer than that to start."""
        while True:
            try:
                job_id = self.client.submit_job(entrypoint="true")
                break
            except RuntimeError as refused:
                assert time.monotonic() < deadline, f"the head's job agent did not start in 120 s: {refused}"
                time.sleep(1)
        while not self.client.get_job_status(job_id).is_terminal():
            assert time.monotonic() < deadline, "the head's first job (`true`) did not end in 120 s"
            time.sleep(0.5)

    def ray(self, *arguments, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(["ray", *arguments], env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 or not check, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    def state(self, kind: str) -> list[dict]:
        """Ray's state API (actors, tasks, nodes) as the dashboard serves it, every entry in detail."""
        request = urllib.request.Request(f"{self.address}/api/v0/{kind}?limit=10000&detail=1", headers=self.headers)
        return json.loads(urllib.request.urlopen(request, timeout=30).read())["data"]["result"]["result"]

    def add_node(self, cpus: int) -> Node:
        """A raylet of `cpus` CPUs on this machine, joined to the head; returns once the head counts it."""
        known = {node["node_id"] for node in self.state("nodes")}
        ports = {flag: free_port() for flag in ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                                                "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")}
        command = ["ray", "start", f"--address={self.gcs}", "--block", "--node-ip-address=127.0.0.1",
                   f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
                   *(f"--{flag}={port}" for flag, port in ports.items())]
        log = open(self.temp / f"node{len(self.nodes)}.log", "w")
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (self.temp / f"node{len(self.nodes)}.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the added raylet did not join in 120 s"
            added = [node for node in self.state("nodes") if node["node_id"] not in known and node["state"] == "ALIVE"]
            if added:
                break
            time.sleep(0.5)
        node = Node(process, added[0]["node_id"])
        self.nodes.append(node)
        return node


@contextlib.contextmanager
def started_head(cpus: int = 2):
    """A Ray head of `cpus` CPUs and no GPU on loopback, for the block's duration."""
    # A short temp folder of its own (Unix socket paths are limited to 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="frt", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **HEALTH_CHECKS,
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    dashboard, port = free_port(), free_port()
    command = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--temp-dir={temp / 'ray'}", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats"]
    log = open(temp / "head.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=_die_with_parent)
    head = None
    try:
        deadline = time.monotonic() + 120
        while head is None:
            assert process.poll() is None, (temp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            try:
                head = Head(dashboard, f"127.0.0.1:{port}", env, token, temp)
                head.client.list_jobs()
            except Exception:
                head = None
                time.sleep(1)
        head.wait_for_job_agent(time.monotonic() + 120)
        yield head
    finally:
        if head is not None:
            for job in head.client.list_jobs():
                if not job.status.is_terminal() and job.submission_id:
                    head.client.stop_job(job.submission_id)
            for node in head.nodes:
                _end_group(node.process)
        _end_group(process)
        log.close()
        # Job drivers run in sessions of their own; end any still there (ours: they name our folders).
        for pid in {pid for folder in (head.folders if head else [temp]) for pid in processes_mentioning(str(folder))}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
