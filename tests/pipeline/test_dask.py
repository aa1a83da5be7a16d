"""The same job on a real dask.distributed cluster (a scheduler and two worker processes, started as
users start them) through Beam's DaskRunner: byte-identical shards and manifest to FnApiRunner."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.shards import folder_bytes, prepare

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "demo.yaml"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install -e .[dask])")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command is not installed")
    address = f"tcp://127.0.0.1:{_free_port()}"
    logs = tmp_path_factory.mktemp("dask")
    port = address.rsplit(":", 1)[1]
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
        stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT,
    )
    workers = subprocess.Popen(
        [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--local-directory", str(logs)],
        stdout=open(logs / "workers.log", "w"), stderr=subprocess.STDOUT,
    )
    try:
        from distributed import Client

        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=max(1, deadline - time.time()))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        workers.terminate()
        scheduler.terminate()
        workers.wait(30)
        scheduler.wait(30)


def test_dask_cluster_writes_the_same_bytes_as_fnapirunner(dask_cluster, tmp_path, capsys):
    code, out, err = prepare(capsys, "--output", tmp_path / "fnapi", "--config", DEMO)
    assert code == 0, err
    code, out, err = prepare(
        capsys, "--output", tmp_path / "dask", "--config", DEMO,
        f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster}",
    )
    assert code == 0, err
    assert "counters:" in out and "documents_read" in out  # from the manifest: the DaskRunner reports no Beam metrics
    dask_files, fnapi_files = folder_bytes(tmp_path / "dask"), folder_bytes(tmp_path / "fnapi")
    assert sorted(dask_files) == sorted(fnapi_files)
    assert dask_files == fnapi_files


def test_dask_reports_a_user_error_as_one_sentence(dask_cluster, tmp_path, capsys):
    import gzip

    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"One sentence. Two sentences.\n" * 5000)[:300])
    code, out, err = prepare(
        capsys, "--input", tmp_path / "cut.txt.gz", "--output", tmp_path / "out",
        f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster}",
    )
    assert code == 2 and "cut.txt.gz is truncated or corrupt" in err and "Traceback" not in err
