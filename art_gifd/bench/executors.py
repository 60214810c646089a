"""
Where benchmark jobs run: in this process, in a local process pool, or as Ray tasks on a local or remote cluster.

The driver (:func:`~art_gifd.bench.runner.run_benchmark`) keeps at most :attr:`Executor.slots` jobs in flight, waits
for any of them to finish and writes its line itself, so results files are only ever written by one process.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from art_gifd.bench.grid import Job, JobOutcome

logger = logging.getLogger(__name__)

#: What an executor runs for each job: ``work(job, utility)`` (the runner's ``run_job``; a module-level function, so
#: that worker processes can import it).
Work = Callable[[Job, "dict[str, Any] | None"], JobOutcome]


class ClusterTooSmall(ValueError):
    """The jobs ask for more CPUs or GPUs than any worker node has, so they could never be scheduled."""


class ExecutorFailure(RuntimeError):
    """
    The executor itself broke (e.g. a pool worker was killed, typically out of memory): the driver restarts it and
    runs the jobs that were in flight again, each alone; one that breaks it again is recorded as an error.
    """


class Executor(abc.ABC):
    """Runs :func:`~art_gifd.bench.runner.run_job` calls and reports them as they finish."""

    #: How many jobs the driver keeps in flight.
    slots: int = 1
    #: The function each job runs (set by :meth:`start`).
    work: Work

    def start(self, work: Work, jobs: Sequence[Job]) -> None:
        """
        Acquire the workers that will run ``work`` (called once, before the first :meth:`submit`) and check that
        they can run ``jobs``; on a refusal the workers are released again.

        :param work: The function each job runs.
        :param jobs: The jobs that will be submitted.
        :raises ClusterTooSmall: If no worker could ever run one of ``jobs``.
        """
        self.work = work
        self._acquire()
        try:
            self._check_jobs(jobs)
        except BaseException:
            self.shutdown()
            raise

    @abc.abstractmethod
    def _check_jobs(self, jobs: Sequence[Job]) -> None:
        """Raise :class:`ClusterTooSmall` for a job the workers could never run."""

    @abc.abstractmethod
    def _acquire(self) -> None:
        """Start the workers."""

    @abc.abstractmethod
    def submit(self, job: Job, utility: dict[str, Any] | None) -> Any:
        """Start ``work(job, utility)`` and return a handle."""

    @abc.abstractmethod
    def wait(self, handles: list[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has finished; return the finished ones."""

    @abc.abstractmethod
    def result(self, handle: Any) -> JobOutcome:
        """The outcome of a finished handle (raises if the executor lost the job)."""

    @abc.abstractmethod
    def cancel(self, handles: list[Any]) -> None:
        """Drop unfinished jobs (after Ctrl-C)."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Release the workers."""

    def restart(self) -> None:
        """Replace broken workers (after :class:`ExecutorFailure`); the lost jobs are submitted again."""
        self.shutdown()
        self._acquire()

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What is recorded about the executor in the results file."""


def init_worker(parent: int, interval: float = 1.0) -> None:
    """
    Set up a pool worker: exit as soon as the driver process ``parent`` is gone, even killed without a chance to
    clean up (SIGKILL), so that no orphaned worker keeps running a job nobody will record; progress bars take a
    thread lock.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="art-gifd-parent-watch", daemon=True).start()
    # tqdm would create a multiprocessing lock in each worker, which an interrupted run's terminate() leaves
    # registered ("leaked semaphore" warnings); a worker's bars are its own, so a thread lock is enough
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())


class LocalExecutor(Executor):
    """
    Jobs on this machine: one after the other in this process (``workers=1``, the default), or in a pool of
    ``workers`` processes (each job uses its configured number of CPU threads).
    """

    def __init__(self, workers: int = 1) -> None:
        """
        :param workers: Number of jobs run at the same time; above 1, each in its own process.
        :raises ValueError: If ``workers`` is not a positive integer.
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}.")
        self.workers = workers
        self.slots = workers
        self._pool: cf.ProcessPoolExecutor | None = None

    def _acquire(self) -> None:
        if self.workers > 1:
            # spawn: fresh interpreters, no fork of a process that already runs torch threads
            self._pool = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(os.getpid(),),
            )

    def _check_jobs(self, jobs: Sequence[Job]) -> None:
        # any job fits: its cpus only set its number of torch threads, and more threads than cores slow every job
        threads = max((job.resources["cpus"] for job in jobs), default=0) * self.workers
        cores = os.cpu_count() or 1
        if threads > cores:
            logger.warning(
                "%g worker(s) × [resources] cpus = %g asks for %g torch threads on %d CPU core(s): oversubscribed "
                "threads can make the jobs many times slower; lower cpus or --workers.",
                self.workers,
                max(job.resources["cpus"] for job in jobs),
                threads,
                cores,
            )

    def submit(self, job: Job, utility: dict[str, Any] | None) -> cf.Future:
        if self._pool is not None:
            return self._pool.submit(self.work, job, utility)
        future: cf.Future = cf.Future()
        future.set_result(self.work(job, utility))
        return future

    def wait(self, handles: list[cf.Future]) -> list[cf.Future]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: cf.Future) -> JobOutcome:
        try:
            return handle.result()
        except cf.process.BrokenProcessPool as exc:
            raise ExecutorFailure(
                f"the worker process running this job died ({exc}), possibly out of memory: give it more memory or "
                "a smaller setting, then rerun with --retry-errors"
            ) from exc

    def cancel(self, handles: list[cf.Future]) -> None:
        for handle in handles:
            handle.cancel()
        if self._pool is not None:
            # Stop the jobs that are running too (ProcessPoolExecutor has no public way to do so).
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "workers": self.workers}


#: Seconds to wait for a TCP connection to a ``host:port`` Ray address before calling ``ray.init`` (which would
#: otherwise retry an unreachable address for minutes).
RAY_PROBE_SECONDS = 5.0


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address given to :class:`RayExecutor`."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(
            f"cannot reach a Ray cluster at '{address}' ({reason}): start one with `ray start --head`, or leave out "
            "--ray-address to run locally"
        )


def probe_address(address: str, timeout: float = RAY_PROBE_SECONDS) -> None:
    """
    Open (and close) a TCP connection to a ``host:port`` or ``ray://host:port`` Ray address, to fail in seconds where
    nothing listens; ``"auto"`` and other forms without a port are left to Ray.

    :param address: The address given to :class:`RayExecutor`.
    :param timeout: Seconds to wait for the connection.
    :raises ClusterUnreachable: If the connection is refused, times out or the host cannot be resolved.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterUnreachable(address, f"nothing answers at {host}:{port}: {exc}") from None


def import_ray() -> Any:
    """Import Ray, or raise an ``ImportError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "The Ray executor needs Ray, an optional dependency: pip install 'art-gifd[distributed]'."
        ) from None
    return ray


class RayExecutor(Executor):
    """
    Jobs as Ray tasks, each requesting the job's ``cpus`` and ``gpus`` (the configuration's ``[resources]``).

    Without ``address`` a local Ray is started on demand (and stopped at the end); with ``address`` (``"auto"``,
    ``"host:6379"`` or ``"ray://host:10001"``) the jobs go to that existing cluster, whose nodes must have art-gifd
    installed and the data and weights paths of the configuration. An address where no cluster answers raises
    :class:`ClusterUnreachable` when the executor starts (within :data:`RAY_PROBE_SECONDS` for a ``host:port``).
    Jobs that ask for more CPUs or GPUs than the largest node of the cluster has raise :class:`ClusterTooSmall`
    before the first is submitted (Ray would keep them waiting for ever); on an autoscaling cluster, start a node
    that fits them before the run.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
        """
        :param address: Address of an existing cluster; ``None`` starts a local one.
        :param num_cpus: CPUs of the local Ray (default: all); not allowed with ``address``.
        :param num_gpus: GPUs of the local Ray (default: all detected); not allowed with ``address``.
        :raises ValueError: If ``num_cpus`` / ``num_gpus`` are given with ``address``.
        """
        if address is not None and (num_cpus is not None or num_gpus is not None):
            raise ValueError("num_cpus and num_gpus size a local Ray: leave them out when connecting to an address.")
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self._ray: Any = None
        self._remote: Any = None
        self._owns_ray = False

    def _acquire(self) -> None:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address, "include_dashboard": False, "log_to_driver": False}
            if self.address is None:
                kwargs.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            else:
                probe_address(self.address)
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                if self.address is None:
                    raise
                raise ClusterUnreachable(self.address, str(exc).rstrip(".")) from None
            self._owns_ray = True
        self._remote = ray.remote(self.work)
        total = ray.cluster_resources()
        self.slots = max(1, int(total.get("CPU", 1)))

    def _check_jobs(self, jobs: Sequence[Job]) -> None:
        # Ray keeps a task that fits no node pending for ever (its warning is among the logs the driver does not
        # show): refuse such jobs before the first is submitted.
        nodes = sorted(
            {(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in self._ray.nodes() if n["Alive"]},
            reverse=True,
        )
        for cpus, gpus in sorted({(job.resources["cpus"], job.resources["gpus"]) for job in jobs}, reverse=True):
            if any(cpus <= node_cpus and gpus <= node_gpus for node_cpus, node_gpus in nodes):
                continue
            sizes = "; ".join(f"cpus = {c:g}, gpus = {g:g}" for c, g in nodes) or "none alive"
            lower = [
                f"{name} = {most:g}"
                for name, asked, most in (
                    ("cpus", cpus, max((c for c, _ in nodes), default=0)),
                    ("gpus", gpus, max((g for _, g in nodes), default=0)),
                )
                if asked > most
            ]
            raise ClusterTooSmall(
                f"each job asks for cpus = {cpus:g}, gpus = {gpus:g} ([resources] of the configuration), but no node "
                f"of the Ray cluster has that many (its nodes: {sizes}), so Ray would never start them: set "
                f"[resources] {' and '.join(lower) or 'cpus and gpus to what one node has'}, or run on a cluster with "
                "larger nodes (--ray-address, or --ray-cpus / --ray-gpus for a local Ray)"
            )

    def submit(self, job: Job, utility: dict[str, Any] | None) -> Any:
        options = {"num_cpus": job.resources["cpus"], "num_gpus": job.resources["gpus"], "max_retries": 0}
        return self._remote.options(**options).remote(job, utility)

    def wait(self, handles: list[Any]) -> list[Any]:
        done, _ = self._ray.wait(handles, num_returns=1)
        return done

    def result(self, handle: Any) -> JobOutcome:
        return self._ray.get(handle)

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            self._ray.cancel(handle, force=True)

    def shutdown(self) -> None:
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def describe(self) -> dict[str, Any]:
        return {"name": "ray", "address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
