"""Joining a Ray cluster and checking its nodes: the second adapter to Ray.

:mod:`bench.grid.ray_executor` runs the trials on Ray Tune; this module holds the Ray
calls made before that, when a study runs on a cluster (``--address`` or ``RAY_ADDRESS``),
so that a wrong address, a missing token or a node without the data is one clear error
before the first trial, not a hang or a failed trial per node:

- :func:`check_address`, before anything is written to the store and without starting
  Ray: the address is one the driver can use, and something answers there.
- :func:`connect`: ``ray.init`` with a bounded wait, and errors that say what to do.
- :func:`check_nodes_have_data`: every node that can run trials finds the datasets in
  its own data directory, and all find the same data.
- :func:`node_identity`: which machine a worker runs on (for results and messages).

The driver must run inside the cluster: on the head node, or as a Ray job. Ray Client
(``ray://``) is refused: under it Tune's driver runs on the cluster, so the results would
never reach the store this process writes to.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.errors import BenchError

# Offline and quiet by default; a user's own settings win.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

log = logging.getLogger(__name__)


def _seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from the environment, else ``default`` (an invalid
    value is reported by :func:`check_address`, not at import)."""
    try:
        value = float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default
    return value if value > 0 and math.isfinite(value) else default


#: Seconds to wait for the cluster's head (its GCS port) to accept a connection. Env
#: ``BENCH_RAY_CONNECT_TIMEOUT`` overrides it.
CONNECT_TIMEOUT = _seconds_from_env("BENCH_RAY_CONNECT_TIMEOUT", 10.0)

#: Seconds each node has to answer the data check (a worker to start, torch to import,
#: the files to be read).
NODE_TIMEOUT = 60.0

_SUPPORTED_WAYS = (
    "run the driver inside the cluster: on the head node "
    "(`bench grid STUDY --address auto`) or as a Ray job (`ray job submit --address "
    "http://HEAD:8265 -- bench grid STUDY --address auto`), writing to MongoDB "
    "(BENCH_MONGO_URI) or to the embedded store on the driver's disk"
)

_AUTH_MARKERS = ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")


# --------------------------------------------------------------------------- address


def check_address(address: str | None, *, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """The cluster address to pass to ``ray.init`` (``host:port``), or None when no
    cluster is named and a local runtime will be started (:func:`connect` starts one even
    when ``ray start`` runs here: joining that cluster takes ``--address auto``).

    ``address`` is ``--address``; None falls back to ``RAY_ADDRESS`` (as does ``auto``, as
    Ray does). ``auto`` is resolved as Ray resolves it: the cluster ``ray start`` last
    recorded on this machine, else a running one found among its processes. Runs before
    the study is written to the store, so a typo costs nothing; it starts no Ray and
    returns within about ``timeout`` seconds.
    """
    _check_timeout_env()
    given = _effective_address(address)
    if given is None:
        return None
    if given.startswith("ray://"):
        raise BenchError(
            f"The Ray address {given!r} is a Ray Client address, which bench does not "
            f"support: under Ray Client the Tune driver runs on the cluster, so the results "
            f"would not reach the store this process writes to. Instead, {_SUPPORTED_WAYS}."
        )
    if given != "auto" and (given.startswith(("http://", "https://")) or _host_port(given) is None):
        raise _malformed(given)  # before Ray, which logs a traceback for some of them
    canonical = _canonical(given)
    _probe(canonical, given, timeout)
    _check_this_machine_is_a_node(canonical)
    return canonical


def _effective_address(address: str | None) -> str | None:
    """The address Ray would use: ``address``, or RAY_ADDRESS when it is None or
    ``auto`` (Ray's rule); None for a local runtime."""
    address = (address or "").strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if (not address or address == "auto") and env:
        address = env
    return None if address in ("", "local") else address


def _canonical(address: str) -> str:
    """``host:port`` as ``ray.init`` will use it: ``auto`` found, localhost replaced by
    this machine's address. Ray's own function, so both agree."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        canonical = canonicalize_bootstrap_address(address)
    except ConnectionError:  # only "auto" raises it
        raise BenchError(
            "--address auto found no Ray cluster running on this machine (`ray start "
            "--head` starts one). Name the head's address (host:port) to join a cluster "
            "elsewhere, or leave --address and RAY_ADDRESS unset to run on this machine."
        ) from None
    except ValueError:
        canonical = None
    if canonical is None or _host_port(canonical) is None:
        raise _malformed(address)
    return canonical


def _malformed(address: str) -> BenchError:
    if address.startswith(("http://", "https://")):
        return BenchError(
            f"The Ray address {address!r} is a dashboard URL; --address and RAY_ADDRESS "
            f"take the cluster's GCS address, host:port (port 6379 unless `ray start "
            f"--head --port` chose another); `ray start --head` prints it. The dashboard "
            f"URL is for `ray job submit --address`."
        )
    return BenchError(
        f"The Ray address {address!r} is malformed: expected host:port (for example "
        f"10.0.0.5:6379 or head-node:6379), `auto` for the cluster running on this "
        f"machine, or nothing to start Ray on this machine."
    )


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _probe(address: str, given: str, timeout: float) -> None:
    """Something accepts TCP connections at ``address``, within ``timeout`` seconds (name
    resolution included: the attempt runs in a thread that is abandoned at the limit)."""
    host, port = _host_port(address)  # type: ignore[misc]  # checked by _canonical
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, name="bench-ray-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    error = outcome[0] if outcome else TimeoutError()
    if error is None:
        return
    named = address if given == address else f"{address} (from {given!r})"
    raise BenchError(f"Cannot reach the Ray cluster at {named}: {_why(error, host, port, timeout)}")


def _why(error: BaseException, host: str, port: int, timeout: float) -> str:
    """What happened, and what to do about it, for a failed connection attempt."""
    if isinstance(error, socket.gaierror):
        return (
            f"the host name {host!r} does not resolve ({error.strerror or error}). Check "
            f"the spelling, or give the head node's IP address."
        )
    if isinstance(error, ConnectionRefusedError):
        return (
            f"nothing accepts connections on port {port} there. Check that Ray runs on "
            f"that machine (`ray status` there; `ray start --head` starts it and prints "
            f"its address) and the port (6379 unless `ray start --head --port` chose "
            f"another)."
        )
    if isinstance(error, (TimeoutError, socket.timeout)):
        return (
            f"no answer within {timeout:g} s: the machine is unreachable from here or a "
            f"firewall drops the connection. Check the address and that port {port} is "
            f"open to this machine (BENCH_RAY_CONNECT_TIMEOUT sets how long to wait)."
        )
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{reason}. Check the address and the network between this machine and the head node."


def _check_this_machine_is_a_node(address: str) -> None:
    """A driver joins through the Ray node on its own machine: where none runs, Ray
    waits a minute (RAY_gcs_server_request_timeout_seconds) and then fails with "No node
    info found". Ray's own search (raylet processes here) says so at once."""
    from ray._private.services import find_gcs_addresses

    if not find_gcs_addresses():
        raise BenchError(
            f"The Ray cluster at {address} answers, but this machine is not one of its "
            f"nodes (no Ray node runs here), and a Ray driver must run on a node. Either "
            f"{_SUPPORTED_WAYS}, or make this machine a node first (`ray start --address "
            f"{address}`)."
        )


def _check_timeout_env() -> None:
    raw = os.environ.get("BENCH_RAY_CONNECT_TIMEOUT", "").strip()
    if raw and _seconds_from_env("BENCH_RAY_CONNECT_TIMEOUT", -1.0) < 0:
        raise BenchError(
            f"BENCH_RAY_CONNECT_TIMEOUT must be a positive number of seconds, got {raw!r}."
        )


# --------------------------------------------------------------------------- joining


def connect(
    address: str | None, *, runtime_env: dict | None = None, timeout: float = CONNECT_TIMEOUT
) -> bool:
    """Starts a local Ray runtime, or joins the cluster at ``address`` (see
    :func:`check_address`), with ``runtime_env`` (the plugins' ``py_modules``). Returns
    whether this call started Ray (and so the caller shuts it down); False when Ray was
    already initialized.

    :func:`check_address` waits up to ``timeout`` seconds for the head to accept a
    connection. Once it has, Ray gets one attempt to register this driver instead of its
    20 (RAY_gcs_server_port_wait_time_s, if set, wins): the failures left then (a refused
    token, a port that is not Ray's, another Ray version) fail the same way every time,
    and one attempt takes about a second, or Ray's own limit (about 40 s, set by its
    RAY_py_gcs_connect_timeout_s and RAY_gcs_rpc_server_connect_timeout_s, read when Ray
    is imported) where the port never answers.

    ``auto`` is passed to Ray as ``auto``: only then does Ray use this machine's token
    (``~/.ray/auth_token``) without RAY_AUTH_MODE=token.
    """
    import ray

    if ray.is_initialized():
        return False
    canonical = check_address(address, timeout=timeout)
    if canonical is None:
        target = "local"  # not the cluster `ray start` recorded here, as ray.init() would
    else:
        target = "auto" if _effective_address(address) == "auto" else canonical
    try:
        with _one_gcs_attempt(joining=canonical is not None), _sigterm_kept():
            ray.init(
                address=target,
                runtime_env=runtime_env,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                configure_logging=True,
            )
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = canonical or "a local runtime"
        if _is_auth_failure(exc):
            raise BenchError(_auth_message(where, exc)) from None
        if canonical is None:
            raise BenchError(f"Could not start Ray on this machine: {_first_line(exc)}.") from None
        raise BenchError(
            f"Could not join the Ray cluster at {canonical}: something accepts connections "
            f"there, but Ray could not register this driver ({_reason(exc)}). Check that the "
            f"address is the head's GCS port (`ray start --head` prints it; not the "
            f"dashboard's or the client server's), that this machine runs the same Ray and "
            f"Python versions as the cluster (`ray --version`), and that the head is "
            f"healthy (`ray status` there)."
        ) from None
    return True


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """``ray.init`` replaces the SIGTERM handler with one that exits the process (and its
    core worker's crash handler then aborts it); the handler this process had (``bench``'s
    own: SIGTERM stops a grid like Ctrl-C, marking its trials interrupted) is put back."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _one_gcs_attempt(*, joining: bool) -> Iterator[None]:
    """While joining, ``ray.init`` tries the GCS once (Ray reads this variable at each
    call; a value the user set wins). Removed after: a local runtime started later in
    this process waits for its own GCS as long as Ray likes."""
    name = "RAY_gcs_server_port_wait_time_s"
    if not joining or name in os.environ:
        yield
        return
    os.environ[name] = "1"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _reason(exc: BaseException) -> str:
    """The innermost error's message; Ray puts a whole traceback in the text of its
    "Failed to connect to GCS" error, whose last line says what went wrong."""
    text = str(list(_chain(exc))[-1])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if "Traceback (most recent call last)" in text else lines[0]).rstrip(".")


def _is_auth_failure(exc: BaseException) -> bool:
    """Ray 2.60 reports a refused or missing token as AuthenticationError, raised directly
    (token mode on, no token here) or as text in the chain of a ConnectionError (the GCS
    answered Unauthenticated)."""
    from ray.exceptions import AuthenticationError

    return any(
        isinstance(e, AuthenticationError) or any(m in str(e) for m in _AUTH_MARKERS) for e in _chain(exc)
    )


def _auth_message(where: str, exc: BaseException) -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode != "token":
        what = (
            "this driver has token authentication off (RAY_AUTH_MODE is not 'token'), so "
            "it sent no token; Ray sends one to an address named with --address or "
            "RAY_ADDRESS only when RAY_AUTH_MODE=token is set"
        )
    elif "no authentication token was found" in str(exc):
        what = "RAY_AUTH_MODE=token is set here but no token was found"
    else:
        what = "the token this driver sent was refused: it is not this cluster's token"
    return (
        f"The Ray cluster at {where} requires an authentication token (Ray token "
        f"authentication) and {what}. Get the cluster's token (`ray get-auth-token` on the "
        f"head node prints it) and run with RAY_AUTH_MODE=token and the token in "
        f"RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token."
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0].rstrip(".")


# ------------------------------------------------------------------------------ nodes


def node_identity() -> dict[str, str]:
    """The machine this process runs on: ``hostname``, and inside Ray also ``node_id``
    and ``node_ip``. Harmless outside Ray (hostname only; Ray is not imported for it)."""
    identity = {"hostname": socket.gethostname()}
    ray = sys.modules.get("ray")  # not imported: not in Ray
    if ray is not None and ray.is_initialized():
        identity["node_id"] = ray.get_runtime_context().get_node_id()
        from ray.util import get_node_ip_address

        identity["node_ip"] = get_node_ip_address()
    return identity


def check_nodes_have_data(datasets: list[str], data_dir: str | None) -> None:
    """Every live node that can run trials finds the datasets that need files, in
    ``data_dir`` (absolute, the same on every node) or, when None, in the node's own
    default (its BENCH_DATA_DIR, else ~/.cache/bench/data): the trials read them there.

    Run with Ray connected, before any trial starts: each node answers one tiny pinned
    task that reads the files without ever downloading them (a node without network
    would fail every trial, and nodes downloading side by side may get different copies).
    The data each node finds must also be the same (their fingerprints agree), or trials
    on different nodes would not be comparable. All problems come as one BenchError,
    node by node. Nodes that join later (autoscaling) are not checked.
    """
    from bench.zoo.datasets import dataset_source
    from bench.zoo.plugins import loaded

    needed = sorted({name for name in datasets if dataset_source(name).needs_files})
    if not needed:
        return
    nodes, reports, problems = _on_every_node(_data_on_this_node, needed, data_dir, loaded())
    if not nodes:
        log.warning("No Ray node can run trials yet; the datasets were not checked on the nodes.")
        return
    for label, report in reports.items():
        problems += [f"{label}: {why}" for why in report["missing"].values()]
    problems += _differing(reports)
    if problems:
        raise BenchError(_data_message(problems, len(nodes), data_dir))


def check_nodes_share_storage(storage: str) -> None:
    """Every live node that can run trials sees the directory ``storage`` (Tune's storage,
    ``BENCH_RAY_DIR``) as the driver does: a trial retried on another node resumes from a
    checkpoint there. The driver writes a marker file with a fresh token; each node must
    read it back. A cloud URI (``s3://…``) is shared by nature and not checked."""
    if "://" in storage:
        return
    marker = Path(storage) / f".bench-shared-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(marker.name)
    try:
        nodes, reports, problems = _on_every_node(_reads_marker, str(marker))
    finally:
        marker.unlink(missing_ok=True)
    problems += [label for label, seen in reports.items() if not seen]
    if problems:
        raise BenchError(
            f"The Ray storage directory {storage} (BENCH_RAY_DIR) is not shared with every node that can run "
            f"trials ({len(nodes)} checked): {'; '.join(problems)} cannot see what the driver writes there. Trials "
            f"checkpoint there, and a trial retried on another node resumes from it. Set BENCH_RAY_DIR to a "
            f"directory every node mounts at the same path (NFS), or to a cloud URI such as s3://BUCKET/bench."
        )


def _reads_marker(path: str) -> bool:
    """Runs on one node: whether it reads the driver's marker file."""
    try:
        return Path(path).read_text() == Path(path).name
    except OSError:
        return False


def _on_every_node(fn: Any, *args: Any) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Runs ``fn(*args)`` once on every live node that can run trials, pinned to it; the
    nodes, each node's answer by label, and the nodes that did not answer (within
    :data:`NODE_TIMEOUT`) or could not run it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = _trial_nodes()
    # No CPU asked: the check must not wait behind other work on a busy node.
    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    pending = {
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args): n
        for n in nodes
    }
    ready = set(ray.wait(list(pending), num_returns=len(pending), timeout=NODE_TIMEOUT)[0]) if pending else set()
    answers: dict[str, Any] = {}
    problems: list[str] = []
    for ref, node in pending.items():  # in ray.nodes() order
        label = _label(node)
        if ref not in ready:
            _cancel(ref)
            problems.append(
                f"{label} did not answer within {NODE_TIMEOUT:g} s (`ray status` shows whether it is lost or "
                f"cannot start workers)"
            )
            continue
        try:
            answers[label] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            problems.append(f"{label} could not run the check ({_first_line(exc)})")
    return nodes, answers, problems


def _trial_nodes() -> list[dict[str, Any]]:
    """Live nodes with CPUs: where Tune may place a trial."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]


def _label(node: dict[str, Any]) -> str:
    host = node.get("NodeManagerHostname") or "?"
    return f"node {node['NodeID'][:8]} ({host}, {node.get('NodeManagerAddress') or '?'})"


def _cancel(ref: Any) -> None:
    import ray

    try:
        ray.cancel(ref, force=True)
    except Exception as exc:  # already finished or gone: nothing to stop
        log.debug("Could not cancel the data check %s: %s", ref, exc)


def _data_on_this_node(datasets: list[str], data_dir: str | None, plugins: list) -> dict[str, Any]:
    """Runs on one node: each dataset's fingerprint as found in its data directory, or
    why it is not there. Never downloads."""
    from bench.zoo.datasets import DataNotPresent, dataset_fingerprint, default_data_dir
    from bench.zoo.plugins import import_on_worker

    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    report: dict[str, Any] = {"identity": node_identity(), "data_dir": str(root), "found": {}, "missing": {}}
    try:
        import_on_worker(plugins)
    except Exception as exc:
        report["missing"] = {"": f"the plugins could not be imported ({_first_line(exc)})"}
        return report
    for name in datasets:
        try:
            report["found"][name] = dataset_fingerprint(name, data_dir=root, download=False)
        except DataNotPresent as exc:  # names the dataset and the directories searched
            report["missing"][name] = _first_line(exc)
        except Exception as exc:  # unreadable, or not the dataset it claims to be
            report["missing"][name] = f"dataset {name!r} in {root}: {_first_line(exc)}"
    return report


def _differing(reports: dict[str, dict[str, Any]]) -> list[str]:
    """Datasets whose copies differ between nodes, each copy named by the nodes holding it."""
    copies: dict[str, dict[str, list[str]]] = {}
    for label, report in reports.items():
        for name, fingerprint in report["found"].items():
            copies.setdefault(name, {}).setdefault(fingerprint, []).append(label)
    return [
        f"dataset {name!r} differs between nodes ("
        + "; ".join(f"data {fp} on {', '.join(labels)}" for fp, labels in by_print.items())
        + ")"
        for name, by_print in sorted(copies.items())
        if len(by_print) > 1
    ]


def _data_message(problems: list[str], nodes: int, data_dir: str | None) -> str:
    where = data_dir or "its BENCH_DATA_DIR, else ~/.cache/bench/data"
    return (
        f"The datasets are not ready on every Ray node that can run trials ({nodes} checked; "
        f"nodes do not download): {'; '.join(problems)}. Each node reads the datasets from "
        f"its own disk, in {where}: put the same dataset files there on every node (or "
        f"mount a shared filesystem there), or pass --data-dir naming a directory that "
        f"holds them on all nodes."
    )
