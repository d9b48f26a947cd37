"""A real S3-compatible object store for the tests: SeaweedFS (see dist_llm.bench.s3_server, which
the benchmarks start the same way), started once per session and stopped after."""

from __future__ import annotations

import pytest

from dist_llm.bench.s3_server import S3Server, SeaweedFS
from tests.integration.slurm_cluster import slurm, slurm_cluster  # noqa: F401


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
