"""Wiring: builds the store, the runtime, the executor and the server from a config."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from agent import hostfs
from agent.api import admin_token, sockets
from agent.api.access import Listeners
from agent.api.auth import TokenTable
from agent.api.server import AgentServer
from agent.api.service import NodeFacts
from agent.config import AgentConfig, is_loopback
from agent.diskspace import DiskSpace
from agent.exclusive import DataDirLock
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.metrics import Metrics
from agent.priority import raise_thread_priority, restore_thread_priority
from agent.runtime import volatile
from agent.runtime.images import ImageStore
from agent.runtime.manager import ContainerManager, RuntimePaths
from agent.store import Store
from agent.supervisor import Supervisor

log = logging.getLogger(__name__)


class Agent:
    """One running agent: store, runtime manager, executor and gRPC server."""

    def __init__(self, config: AgentConfig) -> None:
        config.check()
        # conmon and the runtime run with other working directories: paths must be absolute.
        config = dataclasses.replace(config, data_dir=config.data_dir.resolve())
        self.config = config
        # Before the store opens: a second agent on this data directory stops here.
        self.data_lock = DataDirLock.acquire(config.data_dir)
        hostfs.secure_data_dir(config.data_dir)
        self.store = Store(config.database)
        try:
            volatile.ensure_tmpfs()
        except OSError as error:
            log.warning("volatile state stays on disk: %s", error)
        paths = RuntimePaths.under(config.data_dir, config.runtime_name)
        self.runtime = ContainerManager(
            paths,
            runtime_binary=config.runtime_binary(),
            conmon=config.conmon,
            images=ImageStore(
                paths.images,
                pull_timeout=config.pull_timeout_seconds,
                insecure_registries=config.insecure_registries,
                auth_file=config.registry_auth_file,
            ),
            limits=config.limits,
            bind_allowlist=config.host_policy.bind_allowlist,
        )
        self.executor = Executor(
            self.store,
            self.runtime,
            config.log_dir,
            stop_grace=config.stop_grace_seconds,
            node_limit=config.max_concurrent,
            max_log_bytes=config.max_log_bytes,
            retention=config.retention,
            host_policy=config.host_policy,
            id_ranges=config.id_ranges,
            disk=DiskSpace(config.data_dir, config.min_free_bytes),
            max_pending=config.max_pending,
            max_pending_per_job=config.max_pending_per_job,
        )
        self.scheduler = CronScheduler(self.executor, self.store)
        self.metrics = Metrics()
        self.executor.add_event_listener(self.metrics.observe)
        self.runtime.observe_pull = self.metrics.observe_pull
        self.metrics.watch_load(
            lambda: self.executor.load()[0],
            lambda: self.executor.load()[1],
            self.executor.running_count,
        )
        self.metrics.watch_store(lambda: self.executor.store_durable_at, lambda: self.store.stalled)
        self.server: AgentServer | None = None
        self.supervisor = Supervisor(
            on_restart=self.metrics.count_restart, on_health=self._report_core_health
        )
        self.port = 0

    async def start(self) -> None:
        """Recovers what was running, then starts serving."""
        config = self.config
        gid = config.socket_gid()
        for path in config.sockets:
            sockets.prepare(path, gid)
        node = NodeFacts(config.runtime_name, await self.runtime.runtime_version())
        tokens = self.load_tokens()
        credentials = None if config.tls is None else config.tls.credentials()
        listeners = Listeners(bool(config.tcp_listen), bool(config.sockets), config.tcp_needs_token)
        self.server = AgentServer(
            self.executor,
            self.scheduler,
            node=node,
            tokens=tokens,
            metrics=self.metrics,
            listeners=listeners,
            limits=config.api_limits,
        )
        await self.executor.start()
        self.supervise_background_work()
        for path in config.sockets:
            self.server.listen_unix(path, config.socket_mode, gid)
        for address in config.tcp_listen:
            port = self.server.listen(address, credentials)
            self.port = self.port or port
            self.warn_if_insecure(address, plain=credentials is None)
        await self.server.start()
        if config.metrics_listen:
            port = self.metrics.serve(config.metrics_listen)
            log.info(
                "metrics on http://%s/metrics", config.metrics_listen.rsplit(":", 1)[0] + f":{port}"
            )
        log.info(
            "serving on %s (runtime %s, tls %s, tokens %s)",
            ", ".join(config.listen),
            config.runtime_name,
            "on" if credentials else "off",
            "on" if tokens else "off",
        )

    def supervise_background_work(self) -> None:
        """Starts the long-lived tasks under the supervisor. The cron scheduler is core:
        while it is down, health says NOT_SERVING. Retention and the image budget are not:
        while they are down only disk use grows, and every job still runs; so while the
        disk watch is (a full disk then stops no writer, but triggers are still refused),
        and so is the store's sync (commits then reach the disk as the kernel writes them
        back, within about 30-40 seconds)."""
        self.supervisor.start("scheduler", self.scheduler.run_forever, core=True)
        self.supervisor.start("retention", self.executor.retain_forever, core=False)
        self.supervisor.start("disk", self.executor.watch_disk_forever, core=False)
        self.supervisor.start("store-sync", self.executor.sync_store_forever, core=False)
        if self.config.retention.image_budget_bytes is not None:
            self.supervisor.start("image-gc", self.executor.collect_images_forever, core=False)

    async def _report_core_health(self, healthy: bool) -> None:
        if self.server is not None:
            await self.server.set_core_health(healthy)

    def load_tokens(self) -> TokenTable:
        """The tokens file's tokens; without one, the admin token of the data directory,
        made at the first start."""
        if self.config.tokens_file is not None:
            return TokenTable.load(self.config.tokens_file, self.config.show_env_to_viewers)
        path = self.config.admin_token_file
        table = admin_token.table(admin_token.load_or_create(path))
        log.info("no tokens file: the admin token in %s is the only one", path)
        return table

    def warn_if_insecure(self, address: str, plain: bool) -> None:
        """Logs what --insecure let through on a TCP address, at every start."""
        if self.config.tcp_open:
            log.warning(
                "serving %s without authentication (--insecure): whoever reaches it "
                "can run jobs as root on this host",
                address,
            )
        if plain and not is_loopback(address.rpartition(":")[0]):
            log.warning(
                "serving plain text on %s, a non-loopback address (--insecure): "
                "anyone on the network can read and forge calls",
                address,
            )

    async def stop(self) -> None:
        """Stops serving; running containers keep running and are re-adopted at next start.

        Health turns NOT_SERVING and triggers get UNAVAILABLE first; reads are still served
        for the drain period, streams end with UNAVAILABLE (resume elsewhere or later).
        """
        if self.server is not None:
            await self.server.report_stopping()
        self.executor.begin_stop()
        if self.server is not None:
            await asyncio.sleep(self.config.drain_seconds)
            await self.server.stop(grace=2.0)
        await self.supervisor.stop()
        await self.executor.close()
        self.runtime.close()
        self.store.close()
        self.data_lock.release()


# Helper commands (the runtime's calls, pulls) hold a worker thread while they run, and a
# pull may take minutes. An execution holding a slot uses at most one thread at a time (its
# pull, or its container's preparation and start), and so does each removal, which runs
# after its execution gave the slot back: two per slot, a third for margin, plus SPARE for
# the rest (disk usage walks, pruning, sweeps), so that pulls stuck on a registry never
# starve the runs. Threads are made only when all are busy.
WORKER_THREADS_PER_SLOT = 3
WORKER_THREADS_SPARE = 32
# Objects allocated (less freed) between young collections; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000
# Young collections per middle one, and middle ones per full collection (defaults 10, 10).
GC_OLDER_THRESHOLDS = (20, 20)


def settle_garbage_collector() -> None:
    """Keeps the cyclic garbage collector's pauses out of the event loop's way.

    A full collection walks every tracked object with the loop stopped: with many watch
    streams open it comes every few seconds and lasts long, and each one delayed an event's
    fan-out to every stream (bench P7). What start-up made (modules, descriptors, the
    servicer's tables) lives as long as the process, so it is frozen out of the walk; and
    the thresholds are raised, so that collections come rarer and full ones rarest. Cycles
    are still collected; the agent holds a little more garbage between collections.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


def watch_children_with_pidfds() -> None:
    """Waits for child processes (conmon, the runtime) through pidfds on the event loop,
    instead of Python 3.11's default of one thread per child (Python 3.12 does this
    by itself)."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


async def serve(config: AgentConfig) -> None:
    """Runs the agent until SIGINT or SIGTERM."""
    watch_children_with_pidfds()
    # Before the gRPC server makes its threads, which take the loop's priority; the workers
    # give it back, and so does everything they start.
    base_nice = raise_thread_priority(config.priority_boost)
    # Runtime calls, conmon spawns and bundle work run in worker threads (see
    # agent.runtime.process); one or two per active execution may be in flight at once.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(
            max_workers=WORKER_THREADS_PER_SLOT * config.max_concurrent + WORKER_THREADS_SPARE,
            thread_name_prefix="jobagent-worker",
            initializer=restore_thread_priority,
            initargs=(base_nice,),
        )
    )
    agent = Agent(config)
    await agent.start()
    settle_garbage_collector()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await agent.stop()
