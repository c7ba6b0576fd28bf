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
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from esrgan_cli.batch.cluster.protocol import ClusterOptions, Ready, Result
from esrgan_cli.batch.cluster.worker import Replica, Task, WorkerConfig
from esrgan_cli.errors import ClusterError, RayMissingError, first_line

if TYPE_CHECKING:
    from esrgan_cli.model.weights import LoadedWeights

INSTALL_HINT = 'pip install "esrgan[ray]"'


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"--ray needs Ray, an optional extra: {INSTALL_HINT}") from None
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


def connect(ray: Any, address: str, object_store_bytes: int | None) -> None:
    """`local` starts a cluster on this machine (no dashboard); `auto` joins the one `RAY_ADDRESS` or `ray start`
    names; anything else is HOST:PORT or ray://HOST:PORT. Like `auto`, an explicit address uses Ray's token
    (`~/.ray/auth_token`) when there is one, unless RAY_AUTH_MODE says otherwise."""
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "namespace": "esrgan"}
    if address not in ("local", "auto"):
        _probe(address)
        _token_auth_as_for_auto()
    elif address == "auto" and os.environ.get("RAY_ADDRESS"):
        _probe(os.environ["RAY_ADDRESS"])
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
            hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)"
                    if "auth" in text.lower() or "token" in text.lower() else "")
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {text}{hint}") from None


def _token_auth_as_for_auto() -> None:
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


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

    def __init__(self, ray: Any, weights_ref: Any, config: WorkerConfig, actor_options: dict[str, Any]) -> None:
        self.ray = ray
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
            self.ray.shutdown()


def open_ray_pool(options: ClusterOptions, weights: LoadedWeights,
                  config: WorkerConfig) -> tuple[RayPool, int]:
    """Connect to the cluster at `options.address`; the pool (no replica started yet) and how many to start."""
    import dataclasses

    address = options.address or "auto"
    ray = import_ray_for(address)
    connect(ray, address, options.object_store_bytes)
    try:
        workers, actor_options, threads = _placement(ray, options, config)
        config = dataclasses.replace(config, threads=config.threads or threads)
        return RayPool(ray, ray.put(weights), config, actor_options), workers
    except BaseException:
        ray.shutdown()
        raise
