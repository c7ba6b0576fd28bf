"""The Ray backend of a distributed batch: one actor per replica, fed one file per call.

Why actors and calls rather than Ray Data's `map_batches`: the driver must see each file's result as soon as it is
written (to journal it, so an interrupted run resumes), must know exactly which files a dead replica held (to send
those, and only those, elsewhere, so no output is journaled twice), and must keep a bounded number of files in
flight (flat memory for a million files). Ray Data's retries and its buffering between operators hide all three,
and it brings pyarrow and pandas along. A call costs about a millisecond; a file takes far longer.

Ray is imported only here, and only when `--ray` is used.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch.cluster.protocol import ClusterOptions, Ready, Result
from esrgan_cli.batch.cluster.worker import Replica, Task, WorkerConfig
from esrgan_cli.errors import ClusterError, RayMissingError, first_line

if TYPE_CHECKING:
    from esrgan_cli.model.weights import LoadedWeights

INSTALL_HINT = 'pip install ".[ray]"'  # esrgan is installed from its checkout, not from an index


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"--ray needs Ray, an optional extra: {INSTALL_HINT} in the esrgan checkout") from None
    return ray


def import_ray_for(address: str) -> Any:
    """Ray, set up before its import: `local` keeps the cluster it starts on the loopback interface (Ray would
    otherwise pick this machine's network address)."""
    if address == "local" and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's switch for one-machine clusters
    return import_ray()


def _probe(address: str) -> None:
    """Fail in seconds, in one line, where nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: nothing answers there "
                           f"({e.strerror or e}); is `ray start --head` running?") from None


def connect(ray: Any, address: str, object_store_bytes: int | None, ray_logs: bool = False) -> Callable[[], None]:
    """`local` starts a cluster on this machine (no dashboard); `auto` joins the one `RAY_ADDRESS` or `ray start`
    names; anything else is HOST:PORT or ray://HOST:PORT. Returns what undoes the process-wide settings this made
    (token environment, where Ray prints), for after `ray.shutdown()`.

    Tokens: a `local` cluster gets a fresh token that lives only in the environment of this process and the
    cluster's processes (Ray would write `~/.ray/auth_token`, which then breaks joining clusters without tokens).
    Another cluster is asked first whether it wants a token, and is given Ray's token (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or `~/.ray/auth_token`) only if it does: a driver that expects tokens from a cluster whose
    processes send none refuses its own replicas, which then die while they load the model."""
    undo = [_route_ray_messages(ray, ray_logs)]
    try:
        undo.append(_auth_for(ray, address))
        _init(ray, address, object_store_bytes, ray_logs)
    except BaseException:
        for step in reversed(undo):
            step()
        raise

    def undo_all() -> None:
        for step in reversed(undo):
            step()

    return undo_all


def _init(ray: Any, address: str, object_store_bytes: int | None, ray_logs: bool) -> None:
    # Ray's own log lines: its INFO and worker output under --debug (on stderr, see _route_ray_messages), else none.
    quiet: dict[str, Any] = {"logging_level": logging.INFO if ray_logs else logging.CRITICAL + 1,
                             "log_to_driver": ray_logs, "namespace": "esrgan"}
    # Ray's client server starts a driver process for each ray:// connection; on a busy head it can miss its
    # start-up deadline ("Initialization failure from server") and be ready a moment later: one more try.
    tries = 2 if address.startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        try:
            if address == "local":
                ray.init(address="local", include_dashboard=False, object_store_memory=object_store_bytes, **quiet)
            else:
                ray.init(address=address, **quiet)
            return
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError, TimeoutError...
            if attempt < tries:
                with contextlib.suppress(Exception):
                    ray.shutdown()
                continue
            text = first_line(e)
            hint = (f" (a cluster with token authentication needs its token: {_TOKEN_HELP})"
                    if "auth" in text.lower() or "token" in text.lower() else "")
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {text}{hint}") from None


_TOKEN_HELP = "set RAY_AUTH_TOKEN to the token its head was started with, or put it in ~/.ray/auth_token"


def _route_ray_messages(ray: Any, ray_logs: bool) -> Callable[[], None]:
    """Ray's driver prints what the cluster reports (a worker's death: several coloured lines) on stdout, which
    carries only esrgan's own output: send it to stderr under --debug, else nowhere. Set before `ray.init`, which
    binds the same printer for worker output."""
    module = sys.modules.get("ray._private.worker")
    original = getattr(module, "print_to_stdstream", None)
    if module is None or original is None:  # another Ray: its printing is left as it is
        return lambda: None

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        if ray_logs:
            original({**data, "is_err": True}, ignore_prefix)

    module.print_to_stdstream = to_stderr  # type: ignore[attr-defined]
    return lambda: setattr(module, "print_to_stdstream", original)


def _auth_for(ray: Any, address: str) -> Callable[[], None]:
    """Set RAY_AUTH_MODE and RAY_AUTH_TOKEN for this connection (see `connect`); returns what restores them."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if address == "local":
        if mode == "disabled" or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
            return lambda: None  # the user's choice (no tokens, or their own token), which writes no file
        import secrets

        return _set_auth(ray, secrets.token_hex(32))
    if address.startswith("ray://"):  # the client only sends a token, so an open cluster takes one too
        _probe(address)
        found = _our_token()
        return _set_auth(ray, found[0] if found else None)
    gcs = _gcs_address(ray, address)
    if gcs is None:
        return lambda: None  # nothing found to join: ray.init says so
    _probe(gcs)
    return _set_auth(ray, _token_for(gcs))


def _gcs_address(ray: Any, address: str) -> str | None:
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:  # the cluster `ray start` on this machine recorded
        found = ray._private.services.get_ray_address_from_environment("auto", None)
    except Exception:
        return None
    return found if found and found != "auto" else None


def _token_for(gcs: str) -> str | None:
    """The token the cluster at `gcs` wants: None if it wants none; a one-line ClusterError if we have none or it
    refuses ours. Asked with one cheap call of Ray's control service (Ray itself retries a refusal for 20 s)."""
    if _refused(gcs, None) is not True:
        return None  # no token needed (or the question could not be asked: ray.init finds out)
    found = _our_token()
    if found is None:
        raise ClusterError(f"the Ray cluster at {gcs} needs a token: {_TOKEN_HELP}")
    token, source = found
    if _refused(gcs, token):
        raise ClusterError(f"the Ray cluster at {gcs} refused our token (from {source}): {_TOKEN_HELP}")
    return token


def _refused(gcs: str, token: str | None) -> bool | None:
    """Whether the cluster's control service refuses a call with `token` (None: none sent); None if unknown."""
    try:  # Ray's own gRPC and its control service's messages (untyped, like Ray)
        grpc: Any = importlib.import_module("grpc")
        messages: Any = importlib.import_module("ray.core.generated.gcs_service_pb2")
        services: Any = importlib.import_module("ray.core.generated.gcs_service_pb2_grpc")
    except ImportError:
        return None
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(gcs) as channel:
        stub = services.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(messages.GetClusterIdRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return True if e.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def _our_token() -> tuple[str, str] | None:
    """Ray's token and where it came from, looked up in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, the file
    `~/.ray/auth_token`."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token, "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return (token, str(path)) if token else None


def _set_auth(ray: Any, token: str | None) -> Callable[[], None]:
    """Token authentication on with `token`, or off; returns what puts the environment back. Ray reads both from
    the environment (so the processes it starts get them too) and caches them: its caches are refreshed."""
    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
    saved = {name: os.environ.get(name) for name in names}
    wanted = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    for name in names:
        if (value := wanted.get(name)) is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _refresh_ray_auth()

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _refresh_ray_auth()

    return restore


def _refresh_ray_auth() -> None:
    raylet: Any = importlib.import_module("ray._raylet")
    if not hasattr(raylet, "AuthenticationTokenLoader"):  # a Ray without token authentication
        return
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def _placement(ray: Any, options: ClusterOptions, config: WorkerConfig) -> tuple[int, dict[str, Any], int]:
    """How many replicas, what each asks Ray for, and its torch CPU threads: one GPU each where the cluster has
    GPUs (and the device allows), else an even share of the CPUs."""
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = int(resources.get("GPU", 0)) if config.device not in ("cpu", "mps") else 0
    workers = options.workers or gpus or len(nodes) or 1
    if gpus:
        return workers, {"num_gpus": 1, "num_cpus": 1}, 0
    biggest = max((int(n.get("Resources", {}).get("CPU", 1)) for n in nodes), default=1)
    cpus = max(1, min(biggest, int(resources.get("CPU", 1)) // workers))
    return workers, {"num_cpus": cpus}, cpus


class RayPool:
    """Replicas as Ray actors; each call's ObjectRef is remembered until its result is collected."""

    def __init__(self, ray: Any, weights_ref: Any, config: WorkerConfig, actor_options: dict[str, Any],
                 undo: Callable[[], None] = lambda: None) -> None:
        self.ray = ray
        self._undo = undo  # what connect() changed in this process, put back after disconnecting
        self._weights = weights_ref
        self._config = config
        self._cls = ray.remote(Replica).options(max_concurrency=2, max_restarts=0, max_task_retries=0,
                                                scheduling_strategy="SPREAD", **actor_options)
        self._actors: dict[int, Any] = {}
        self._refs: dict[Any, tuple[int, int | None]] = {}  # ref → (slot, task id; None for the start call)
        self._next = 0
        self._closed = False

    def launch(self) -> int:
        self._next += 1
        actor = self._cls.remote()
        self._actors[self._next] = actor
        self._refs[actor.start.remote(self._weights, self._config)] = (self._next, None)
        return self._next

    def send(self, slot: int, task_id: int, task: Task) -> None:
        self._refs[self._actors[slot].run.remote(task)] = (slot, task_id)

    def pid(self, slot: int) -> int:
        """The process of a replica (for tests that kill one)."""
        return int(self.ray.get(self._actors[slot].pid.remote()))

    def poll(self, timeout: float) -> list[Ready | Result]:
        if not self._refs:
            time.sleep(min(timeout, 0.05))
            return []
        refs = list(self._refs)
        done, rest = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if done and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return [self._event(ref) for ref in done]

    def _event(self, ref: Any) -> Ready | Result:
        slot, task_id = self._refs.pop(ref)
        exceptions = self.ray.exceptions
        try:
            value = self.ray.get(ref)
        except exceptions.RayTaskError:
            raise  # a bug in esrgan's own code on the worker: shown with its remote traceback
        except exceptions.RayError as e:  # the actor, its process or its node died
            reason = f"{type(e).__name__}: {first_line(e, 120)}"
            return Ready(slot, None, reason) if task_id is None else Result(slot, task_id, None, reason)
        return Ready(slot, value) if task_id is None else Result(slot, task_id, value)

    def kill(self, slot: int) -> None:
        actor = self._actors.pop(slot, None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass

    def close(self) -> None:
        """Kill every replica and wait (up to a minute) until Ray reports each call ended, so no replica is still
        writing when the caller removes temp files; then disconnect (and stop a cluster that `local` started)."""
        if self._closed:
            return
        self._closed = True
        try:
            for slot in list(self._actors):
                self.kill(slot)
            if self._refs:
                self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=60)
            self._refs.clear()
        finally:
            try:
                self.ray.shutdown()
            finally:
                self._undo()


def open_ray_pool(options: ClusterOptions, weights: LoadedWeights,
                  config: WorkerConfig) -> tuple[RayPool, int]:
    """Connect to the cluster at `options.address`; the pool (no replica started yet) and how many to start."""
    import dataclasses

    address = options.address or "auto"
    ray = import_ray_for(address)
    undo = connect(ray, address, options.object_store_bytes, options.ray_logs)
    try:
        workers, actor_options, threads = _placement(ray, options, config)
        config = dataclasses.replace(config, threads=config.threads or threads)
        return RayPool(ray, ray.put(weights), config, actor_options, undo), workers
    except BaseException:
        try:
            ray.shutdown()
        finally:
            undo()
        raise
