"""Joining a Ray cluster and checking its nodes (:mod:`bench.grid.cluster`), against real Ray.

The address checks start no Ray. The cluster tests run a simulated two-node cluster in
this process (``ray.cluster_utils.Cluster``); both nodes share this machine's disk, so the
node "without the data" is one whose own BENCH_DATA_DIR (a node's default data directory,
given to each node's raylet and so to its workers) names an empty directory. Token
authentication runs its cluster and drivers in subprocesses: Ray caches the mode per process.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import bench.grid.cluster as cluster_mod
from bench.errors import BenchError
from bench.grid.cluster import check_address, check_nodes_have_data, connect, node_identity

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_fashion(directory: Path, seed: int = 0) -> Path:
    """A tiny Fashion-MNIST in the IDX format (20 train / 10 validation images)."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 255, (20, 28, 28)), np.arange(20) % 10, rng.integers(0, 255, (10, 28, 28)), np.arange(10) % 10
    )
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, arrays):
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (directory / f"{name}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return directory


def this_ip() -> str:
    """The address Ray puts in place of localhost (what it connects to)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


@pytest.fixture
def listener():
    """A TCP port that accepts nothing: its backlog is full, so a new connection gets no
    answer (Linux drops the SYN), the way a firewalled host behaves."""
    server = socket.socket()
    server.bind(("", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in (*fillers, server):
        sock.close()


@pytest.fixture
def not_ray():
    """A port that accepts connections and answers like a web server, not a GCS: the
    dashboard's port given as the cluster's, say."""
    server = socket.socket()
    server.bind(("", 0))
    server.listen(64)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("BENCH_RAY_CONNECT_TIMEOUT", raising=False)


# ----------------------------------------------------------------- addresses, no Ray


def test_no_address_means_a_local_runtime(monkeypatch):
    assert check_address(None) is None
    assert check_address("") is None
    assert check_address("local") is None
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert check_address(None) is None


@pytest.mark.parametrize("from_env", [False, True])
def test_ray_client_is_refused_naming_the_supported_ways(monkeypatch, from_env):
    if from_env:
        monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(BenchError) as caught:
        check_address(None if from_env else "ray://head:10001")
    message = str(caught.value)
    assert "'ray://head:10001'" in message and "Ray Client" in message
    assert "would not reach the store" in message
    assert "--address auto" in message and "ray job submit --address http://HEAD:8265" in message
    assert "BENCH_MONGO_URI" in message and "embedded store" in message
    assert "\n" not in message


@pytest.mark.parametrize("address", ["head", "head:port", "head:0", "head:70000", "a:b:c", ":6379", "::1:6379"])
def test_malformed_address(address):
    with pytest.raises(BenchError, match="malformed: expected host:port"):
        check_address(address)


def test_dashboard_url_is_not_the_cluster_address():
    with pytest.raises(BenchError, match="dashboard URL.*host:port.*ray job submit"):
        check_address("http://head:8265")


def test_refused_port_fails_fast():
    start = time.monotonic()
    with pytest.raises(BenchError) as caught:
        check_address("127.0.0.1:1", timeout=10)
    assert time.monotonic() - start < 2
    message = str(caught.value)
    assert f"Cannot reach the Ray cluster at {this_ip()}:1 (from '127.0.0.1:1')" in message
    assert "nothing accepts connections on port 1" in message and "ray start --head" in message


def test_unanswered_connection_is_bounded_by_the_timeout(listener):
    start = time.monotonic()
    with pytest.raises(BenchError, match=r"no answer within 1 s.*BENCH_RAY_CONNECT_TIMEOUT"):
        check_address(f"127.0.0.1:{listener}", timeout=1)
    assert 0.9 < time.monotonic() - start < 2.5


def test_unknown_host_name():
    with pytest.raises(BenchError, match="'no-such-head.invalid' does not resolve"):
        check_address("no-such-head.invalid:6379", timeout=5)


def test_an_answering_address_is_returned_as_ray_will_use_it(not_ray, monkeypatch):
    import ray._private.services as services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({f"{this_ip()}:{not_ray}"}))  # a node here
    assert check_address(f"localhost:{not_ray}") == f"{this_ip()}:{not_ray}"


def test_a_machine_without_a_ray_node_cannot_drive_a_cluster(not_ray, monkeypatch):
    # Ray looks for raylet processes on this machine; other sessions' may run here.
    import ray._private.services as services

    monkeypatch.setattr(services, "find_gcs_addresses", frozenset)
    start = time.monotonic()
    with pytest.raises(BenchError) as caught:
        check_address(f"127.0.0.1:{not_ray}")
    assert time.monotonic() - start < 2  # Ray would wait 60 s
    message = str(caught.value)
    assert f"at {this_ip()}:{not_ray} answers, but this machine is not one of its nodes" in message
    assert "--address auto" in message and "ray job submit" in message
    assert f"`ray start --address {this_ip()}:{not_ray}`" in message


def test_auto_without_a_cluster(monkeypatch, tmp_path):
    # Ray looks in $RAY_TMPDIR/ray/ray_current_cluster, then for GCS processes on this
    # machine (other sessions' Ray may run here: that search is made to find none).
    import ray._private.services as services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(services, "find_gcs_addresses", frozenset)
    with pytest.raises(BenchError, match=r"no Ray cluster running on this machine \(`ray start --head` starts one\)"):
        check_address("auto")


def test_auto_uses_the_cluster_ray_start_recorded(monkeypatch, tmp_path, not_ray):
    import ray._private.services as services

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{not_ray}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({f"{this_ip()}:{not_ray}"}))
    assert check_address("auto") == f"{this_ip()}:{not_ray}"


def test_invalid_timeout_setting(monkeypatch):
    monkeypatch.setenv("BENCH_RAY_CONNECT_TIMEOUT", "soon")
    with pytest.raises(BenchError, match="BENCH_RAY_CONNECT_TIMEOUT must be a positive number of seconds, got 'soon'"):
        check_address("127.0.0.1:1")


def test_datasets_without_files_need_no_node(monkeypatch):
    monkeypatch.setattr(cluster_mod, "_trial_nodes", lambda: pytest.fail("no node should be asked"))
    check_nodes_have_data(["digits", "synthetic"], "/nowhere")


def test_node_identity_outside_ray():
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        pytest.skip("Ray is initialized in this process")
    assert node_identity() == {"hostname": socket.gethostname()}


# ---------------------------------------------------------------- joining, with Ray


_LOCAL = """
import ray
from bench.grid.cluster import connect
print(connect(None), len(ray.nodes()), flush=True)
ray.shutdown()
"""


@pytest.mark.ray
def test_no_address_starts_a_local_runtime_despite_a_stale_record(tmp_path):
    # A crashed `ray start` left its address behind: a bare ray.init() retries it for
    # about 14 minutes (20 attempts; each took about 41 s here, with Ray 2.60).
    ray_tmp = Path(tempfile.mkdtemp(prefix="bcl-", dir="/tmp"))  # short: Ray's socket paths
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=str(ray_tmp), HOME=str(tmp_path))
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-c", _LOCAL], env=env, capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "True 1", done.stderr[-2000:]
        assert time.monotonic() - start < 20
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


_TOKEN = "bench-test-token-0123456789abcdef0123"

_TOKEN_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""

_DRIVER = """
import sys
from bench.errors import BenchError
from bench.grid.cluster import connect
try:
    print("joined" if connect(sys.argv[1], timeout=2) else "already")
except BenchError as exc:
    print(exc)
"""


@pytest.fixture
def token_cluster(tmp_path):
    """A one-node cluster with Ray token authentication, in its own process."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="bct-", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-c", _TOKEN_CLUSTER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield SimpleNamespace(address=proc.stdout.readline().strip(), ray_tmp=ray_tmp)
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def drive(address: str, home: Path, ray_tmp: Path, **auth: str) -> str:
    """The outcome of connect() in a fresh driver process with these RAY_AUTH_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), **auth)
    done = subprocess.run([sys.executable, "-c", _DRIVER, address], env=env, capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.ray
def test_a_missing_or_wrong_token_is_named(token_cluster, tmp_path):
    address, ray_tmp = token_cluster.address, token_cluster.ray_tmp
    assert address, "the token cluster did not start"
    off = drive(address, tmp_path, ray_tmp)
    assert f"The Ray cluster at {address} requires an authentication token" in off
    assert "RAY_AUTH_MODE is not 'token'" in off
    assert "ray get-auth-token" in off and "RAY_AUTH_TOKEN" in off and "~/.ray/auth_token" in off
    assert "no token was found" in drive(address, tmp_path, ray_tmp, RAY_AUTH_MODE="token")
    wrong = drive(address, tmp_path, ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="x" * 36)
    assert "was refused: it is not this cluster's token" in wrong
    assert drive(address, tmp_path, ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN) == "joined"


# ----------------------------------------------------------- two nodes, with Ray


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node, each with its own BENCH_DATA_DIR, this process joined
    through :func:`connect`."""
    import ray
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="bcc-", dir="/tmp"))  # short: Ray's socket paths
    dirs = SimpleNamespace(head=root / "head-data", worker=root / "worker-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(root))  # the cluster records its address here, not in /tmp/ray
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": {"BENCH_DATA_DIR": str(dirs.head)}}
        )
        try:
            worker = cluster.add_node(num_cpus=1, env_vars={"BENCH_DATA_DIR": str(dirs.worker)})
            started = connect(cluster.address)
            yield SimpleNamespace(cluster=cluster, head=cluster.head_node, worker=worker, dirs=dirs, started=started)
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def data(two_nodes):
    """Empties both nodes' data directories after each test."""
    yield two_nodes.dirs
    for directory in vars(two_nodes.dirs).values():
        shutil.rmtree(directory, ignore_errors=True)


def on_node(node, function, *args):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    return ray.get(ray.remote(num_cpus=0)(function).options(scheduling_strategy=strategy).remote(*args), timeout=60)


@pytest.mark.ray
def test_connect_joins_once(two_nodes):
    assert two_nodes.started is True
    assert connect(two_nodes.cluster.address) is False  # already joined: the caller shuts nothing down


@pytest.mark.ray
def test_a_port_that_is_not_the_gcs_fails_at_once(two_nodes, tmp_path):
    # The worker node's raylet port: Ray's gRPC, but not the GCS (Ray alone tries 20 s).
    address = f"{two_nodes.worker.node_ip_address}:{two_nodes.worker.node_manager_port}"
    start = time.monotonic()
    outcome = drive(address, tmp_path, tmp_path)
    assert time.monotonic() - start < 12
    assert f"Could not join the Ray cluster at {address}: something accepts connections" in outcome
    assert "GCS port" in outcome and "same Ray and Python versions" in outcome
    assert "Traceback" not in outcome and "\n" not in outcome


@pytest.mark.ray
def test_node_identity_names_the_node_a_task_ran_on(two_nodes):
    for node in (two_nodes.head, two_nodes.worker):
        identity = on_node(node, node_identity)
        assert identity == {"hostname": socket.gethostname(), "node_id": node.node_id, "node_ip": node.node_ip_address}


@pytest.mark.ray
def test_each_node_has_its_own_data_directory(two_nodes):
    from bench.zoo.datasets import default_data_dir

    assert on_node(two_nodes.worker, default_data_dir) == two_nodes.dirs.worker
    assert on_node(two_nodes.head, default_data_dir) == two_nodes.dirs.head


@pytest.mark.ray
def test_data_check_passes_when_every_node_has_the_data(data):
    write_fashion(data.head / "fashion-mnist")
    write_fashion(data.worker / "FashionMNIST" / "raw")  # torchvision's layout: the same data
    start = time.monotonic()
    check_nodes_have_data(["fashion-mnist", "digits"], None)
    check_nodes_have_data(["fashion-mnist"], str(data.head))  # one absolute directory, seen by both
    assert time.monotonic() - start < 40


@pytest.mark.ray
def test_data_check_names_the_node_without_the_data(two_nodes, data):
    write_fashion(data.head / "fashion-mnist")
    with pytest.raises(BenchError) as caught:
        check_nodes_have_data(["fashion-mnist", "digits"], None)
    message = str(caught.value)
    worker, head = two_nodes.worker.node_id[:8], two_nodes.head.node_id[:8]
    assert f"node {worker} ({socket.gethostname()}, {two_nodes.worker.node_ip_address})" in message
    assert f"Dataset 'fashion-mnist' is not in the data directory {data.worker}" in message
    assert head not in message and "digits" not in message
    assert "(2 checked; nodes do not download)" in message
    assert "same dataset files there on every node" in message and "\n" not in message
    assert not (data.worker / "FashionMNIST").exists()  # nothing was downloaded


@pytest.mark.ray
def test_data_check_finds_different_copies(two_nodes, data):
    write_fashion(data.head / "fashion-mnist", seed=0)
    write_fashion(data.worker / "fashion-mnist", seed=1)
    with pytest.raises(BenchError, match="dataset 'fashion-mnist' differs between nodes") as caught:
        check_nodes_have_data(["fashion-mnist"], None)
    assert two_nodes.head.node_id[:8] in str(caught.value) and two_nodes.worker.node_id[:8] in str(caught.value)


@pytest.mark.ray
def test_a_node_that_does_not_answer_is_named(two_nodes, data, monkeypatch):
    # The worker node's raylet (a process this test started) is paused: the node is
    # still alive to the cluster but runs nothing.
    write_fashion(data.head / "fashion-mnist")
    write_fashion(data.worker / "fashion-mnist")
    monkeypatch.setattr(cluster_mod, "NODE_TIMEOUT", 3.0)
    raylet = two_nodes.worker.all_processes["raylet"][0].process.pid
    os.kill(raylet, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BenchError) as caught:
            check_nodes_have_data(["fashion-mnist"], None)
        assert time.monotonic() - start < 10
    finally:
        os.kill(raylet, signal.SIGCONT)
    message = str(caught.value)
    assert f"node {two_nodes.worker.node_id[:8]}" in message and "did not answer within 3 s" in message
    assert two_nodes.head.node_id[:8] not in message


@pytest.mark.ray
def test_storage_seen_by_every_node_passes(two_nodes, tmp_path):
    cluster_mod.check_nodes_share_storage(str(tmp_path / "ray"))
    assert list((tmp_path / "ray").iterdir()) == []  # the marker is removed
    cluster_mod.check_nodes_share_storage("s3://bucket/bench")  # a URI: shared by nature, not checked


@pytest.mark.ray
def test_storage_one_node_cannot_see_is_named(two_nodes, tmp_path, monkeypatch):
    worker_dir = str(two_nodes.dirs.worker)

    def blind_worker(path):  # nested, so Ray ships it by value: the worker node reads nothing
        import os
        from pathlib import Path

        return os.environ.get("BENCH_DATA_DIR") != worker_dir and Path(path).read_text() == Path(path).name

    monkeypatch.setattr(cluster_mod, "_reads_marker", blind_worker)
    with pytest.raises(BenchError) as caught:
        cluster_mod.check_nodes_share_storage(str(tmp_path / "ray"))
    message = str(caught.value)
    assert f"node {two_nodes.worker.node_id[:8]}" in message and two_nodes.head.node_id[:8] not in message
    assert "BENCH_RAY_DIR" in message and "NFS" in message and "s3://" in message
