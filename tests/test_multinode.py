"""Two nodes, for real, on one machine: two `torchrun` agents (`--nnodes 2 --nproc_per_node 1 --node_rank 0|1
--master_addr 127.0.0.1`, static rendezvous, gloo). To the code they are two nodes: each process is local rank 0 of
its own node and its own agent, and the run only shares what goes through the process group and `output_dir`.

- a separate `output_dir` per node is refused before anything is written, in one line that names `output_dir`;
- one shared `output_dir`: a 1-round run equals a one-node, two-process run of the same recipe;
- node 0 killed mid-round (agent and worker, SIGKILL): node 1 exits well within `ddp_timeout`, saying a peer died
  and how to resume; relaunching both nodes resumes the round and ends where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, assert_rows_match, kill_tree, spawn, two_rank_run_args

from rs_trainer.run.io import read_jsonl
from rs_trainer.run.servers import free_port

pytestmark = pytest.mark.slow
KILL_AT = str(REPO / "tests" / "kill_at.py")
DDP_TIMEOUT = 120  # seconds: long enough for a loaded 2-core machine's slowest rank, short against torch's 30 min


def node_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RS_KILL_AT", "RS_KILL_NODE")}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_args(model, out, **overrides) -> list[str]:
    settings = {"num_rounds": 1, "use_peft": True, "lora_target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    return two_rank_run_args(model, out, ddp_timeout=DDP_TIMEOUT, **{**settings, **overrides})


class Launch:
    """One `torchrun` agent and its workers (`helpers.spawn`); `kill` ends every process of it by id
    (`helpers.kill_tree`: torch elastic starts each worker in a session of its own)."""

    def __init__(self, torchrun_args: list[str], argv: list[str], log: Path, **env):
        self.log = log
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, KILL_AT, *argv]
        with open(log, "w") as f:
            self.process = spawn(cmd, env=node_env(**env), stdout=f, stderr=subprocess.STDOUT)

    def wait(self, deadline: float) -> int | None:
        """The exit code, or None if the agent is still running at `deadline` (a `time.monotonic()` value)."""
        try:
            return self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_tree(self.process)

    @property
    def output(self) -> str:
        return self.log.read_text()


def start_nodes(nodes: list[tuple[list[str], dict]], tmp_path: Path, name: str, agents: list[Launch]) -> None:
    """Start one agent per (argv, env), node rank in list order, appending each to `agents` as it starts (so that a
    caller's `finally` can end those already started if a later one fails)."""
    port = str(free_port())
    for rank, (argv, env) in enumerate(nodes):
        topology = ["--nnodes", str(len(nodes)), "--nproc_per_node", "1", "--node_rank", str(rank)]
        address = ["--master_addr", "127.0.0.1", "--master_port", port]
        agents.append(Launch(topology + address, argv, tmp_path / f"{name}.node{rank}.log", **env))


def launch(nodes: list[tuple[list[str], dict]], tmp_path: Path, name: str, timeout: float = 600) -> list[Launch]:
    """Start one agent per (argv, env) and wait for all of them; every process is gone when this returns."""
    agents = []
    try:
        start_nodes(nodes, tmp_path, name, agents)
        deadline = time.monotonic() + timeout
        for agent in agents:
            agent.wait(deadline)
    finally:
        for agent in agents:
            agent.kill()  # a no-op for an agent that exited, with its workers
    return agents


@pytest.fixture(scope="module")
def one_node_run(tiny_model, tmp_path_factory) -> Path:
    """The reference: the same recipe as one node with two processes."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    topology = ["--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    agent = Launch([*topology, "--master_port", str(free_port())], run_args(tiny_model, out), out.parent / "log")
    try:
        assert agent.wait(time.monotonic() + 600) == 0, agent.output[-4000:]
    finally:
        agent.kill()
    return out


def test_a_node_with_its_own_output_dir_is_refused_before_anything_is_written(tiny_model, tmp_path):
    node0, node1 = tmp_path / "node0" / "run", tmp_path / "node1" / "run"
    agents = launch([(run_args(tiny_model, node0), {}), (run_args(tiny_model, node1), {})], tmp_path, "split")
    for agent in agents:  # each node refuses, in one line, naming the rank that cannot see rank 0's files
        errors = [line for line in agent.output.splitlines() if line.startswith("rs_trainer: error:")]
        assert agent.process.returncode != 0 and len(errors) == 1, agent.output[-3000:]
        assert "`output_dir`" in errors[0] and "is not shared: rank(s) [1]" in errors[0], errors
    assert not node0.exists() and not node1.exists()  # nothing written on either node


def assert_same_run(out: Path, reference: Path) -> None:
    """Ids and texts exactly; floats within `assert_rows_match`'s float32 tolerance (the same computation, but the
    two layouts may reduce in another order)."""
    for name in ("generations.jsonl", "sft.jsonl"):
        assert_rows_match(read_jsonl(out / "round_0" / name), read_jsonl(reference / "round_0" / name))
    metrics, expected = (json.loads((d / "round_0" / "metrics.json").read_text()) for d in (out, reference))
    untimed = sorted(k for k in expected if not k.startswith("timing/") and not k.endswith("_per_s"))
    assert_rows_match([{k: metrics[k] for k in untimed}], [{k: expected[k] for k in untimed}])
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").exists()


def test_two_nodes_sharing_output_dir_equal_one_node(tiny_model, tmp_path, one_node_run):
    out = tmp_path / "run"
    agents = launch([(run_args(tiny_model, out), {})] * 2, tmp_path, "shared")
    assert [a.process.returncode for a in agents] == [0, 0], agents[0].output[-3000:] + agents[1].output[-3000:]
    assert_same_run(out, one_node_run)


def test_a_node_killed_mid_round_stops_the_other_and_both_resume(tiny_model, tmp_path, one_node_run):
    out = tmp_path / "run"
    argv = run_args(tiny_model, out)
    # Node 0 (rank 0, which also holds the rendezvous store) dies as it writes round 0's scored generations.
    kill = {"RS_KILL_AT": "generations.jsonl", "RS_KILL_NODE": "1"}
    agents = []
    try:
        start_nodes([(argv, kill), (argv, {})], tmp_path, "killed", agents)
        assert agents[0].wait(time.monotonic() + 600) == -signal.SIGKILL, agents[0].output[-3000:]
        died = time.monotonic()
        code = agents[1].wait(died + DDP_TIMEOUT)
        waited = time.monotonic() - died
    finally:
        for agent in agents:
            agent.kill()
    assert code is not None and code != 0, f"node 1 still running {DDP_TIMEOUT} s after node 0 died"
    errors = [line for line in agents[1].output.splitlines() if line.startswith("rs_trainer: error:")]
    assert len(errors) == 1 and "lost" in errors[0] and "rerun the same command" in errors[0], agents[1].output[-3000:]
    assert not (out / "round_0" / "generations.jsonl").exists() and not (out / "round_0" / "metrics.json").exists()
    print(f"node 1 exited {waited:.1f} s after node 0 died")

    agents = launch([(argv, {})] * 2, tmp_path, "resumed")
    assert [a.process.returncode for a in agents] == [0, 0], agents[0].output[-3000:] + agents[1].output[-3000:]
    assert_same_run(out, one_node_run)
