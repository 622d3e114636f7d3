"""The fake cluster behaves like separate machines where the tests rely on it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .localcluster import HEAD_LABEL, WORKER_LABEL, cluster_env

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

# A driver with a working_dir: an actor on the head, then (once the test has let a node join) one on the worker.
WHERE = """
import os, sys, time, ray
address, working_dir, go = sys.argv[1:4]
ray.init(address=address, runtime_env={"working_dir": working_dir}, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=0)
class Where:
    def cwd(self):
        return os.getcwd()

head = Where.options(resources={sys.argv[4]: 0.01}).remote()
print("head", ray.get(head.cwd.remote()), flush=True)
while not os.path.exists(go):
    time.sleep(0.2)
worker = Where.options(resources={sys.argv[5]: 0.01}).remote()
print("worker", ray.get(worker.cwd.remote()), flush=True)
print("head again", ray.get(head.cwd.remote()), flush=True)
"""


def test_a_node_joining_mid_job_leaves_the_other_nodes_working_dir_alone(ray_cluster, tmp_path):
    """A node's runtime-env agent unpacks a job's working_dir with overwrite=True (Ray 2.60 removes the directory
    first, "Removing ... with pkg_file" in its log). Nodes that exist when a job starts unpack it at once (eager
    install), so only a node joining mid-job did it under running workers: with one Ray temp dir shared by the
    fake nodes, it removed their cwd (a worker then died in os.getcwd() importing torch). Each node now has its
    own temp dir, as machines have their own disks."""
    working_dir, go = tmp_path / "wd", tmp_path / "go"
    working_dir.mkdir()
    (working_dir / "unique.txt").write_text(str(tmp_path))  # a working_dir no node has unpacked yet
    args = [sys.executable, "-c", WHERE, ray_cluster.address, str(working_dir), str(go), HEAD_LABEL, WORKER_LABEL]
    driver = subprocess.Popen(args, env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = driver.stdout.readline()
        assert first.startswith("head /"), first or driver.stderr.read()[-3000:]
        ray_cluster.kill_worker()
        ray_cluster.add_worker(ray_cluster.nodes["worker"].num_cpus)  # joins while the job runs
        go.touch()
        rest, errors = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 0, errors[-3000:]
    cwd = dict(line.split(" /", 1) for line in (first + rest).splitlines() if " /" in line)
    assert cwd["head again"] == cwd["head"], first + rest  # the head's worker still has its cwd
    assert cwd["worker"] != cwd["head"]  # each node its own copy
