"""Generators beyond the in-process policy, against real `transformers serve` processes on 127.0.0.1: a teacher
behind an OpenAI-compatible endpoint next to the policy, the policy behind a server rs_trainer starts each round,
refusals before sampling, and a server killed mid-round then resumed. Nothing leaves this machine."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO, SERVE, SERVER_STARTUP_S, Server, recipe_args, run_group, started

from rs_trainer.cli import main
from rs_trainer.run.io import read_jsonl, read_jsonl_prefix
from rs_trainer.run.servers import free_port
from rs_trainer.tools.export import dpo_pairs

pytestmark = pytest.mark.slow


def teacher(base_url, model, **extra):
    return {"name": "teacher", "engine": "openai", "base_url": base_url, "model": str(model), **extra}


def write_recipe(path, argv, generators):
    """A recipe file holding `generators` (a list of mappings is a recipe key, not a command-line flag)."""
    import yaml

    path.write_text(yaml.safe_dump({"generators": generators}))
    return ["--config", str(path), *argv]


def two_lora_rounds(model, out) -> list[str]:
    """Two LoRA rounds on the tiny model, scored by length, without held-out evaluation."""
    return recipe_args(
        model,
        out,
        num_rounds=2,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj"],
        dataset_test_split=None,
        report_to="none",
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )


def run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_endpoint_that_refuses_connections_is_refused_before_sampling(tiny_model, tmp_path, capsys):
    import socket

    out = tmp_path / "o"
    with socket.socket() as held:  # bound, never listening: connections are refused, and no one else can take it
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        argv = write_recipe(tmp_path / "r.yaml", recipe_args(tiny_model, out), [{"name": "policy"}, teacher(url, "m")])
        code, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "`generators[1]` (teacher)" in err and url in err and "does not answer" in err
    assert not out.exists() or not any(out.iterdir())


def test_gpu_only_server_on_a_cpu_machine_is_refused(tiny_model, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    gens = [{"name": "policy", "engine": "server", "command": "vllm serve {model} --host {host} --port {port}"}]
    code, err = run(write_recipe(tmp_path / "r.yaml", recipe_args(tiny_model, tmp_path / "o"), gens), capsys)
    assert code == 2 and "serves on CUDA GPUs only" in err and "--device cpu" in err, err


def test_server_command_with_unknown_braces_is_refused():
    from rs_trainer.errors import ConfigError
    from rs_trainer.generators import parse_generators

    command = 'vllm serve {model} --port {port} --override-generation-config {"do_sample": true}'
    with pytest.raises(ConfigError, match=r"`command` has a placeholder other than .* write literal braces doubled"):
        parse_generators([{"name": "policy", "engine": "server", "command": command}], 4)
    ok = 'vllm serve {model} --port {port} --override-generation-config {{"do_sample": true}}'
    assert parse_generators([{"name": "policy", "engine": "server", "command": ok}], 4)[0].command == ok


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"engine": "vllm", "api": "chat"}, "are for server engines"),
        ({"engine": "local", "gpu_memory_utilization": 0.5}, "are for `engine: vllm`"),
        ({"engine": "server", "command": "s {port}", "vllm_kwargs": {"max_num_seqs": 8}}, "are for `engine: vllm`"),
        ({"engine": "vllm", "gpu_memory_utilization": 1.5}, r"`gpu_memory_utilization` in \(0, 1\]"),
        ({"engine": "vllm", "tensor_parallel_size": 0}, "`tensor_parallel_size` >= 1"),
        ({"engine": "openai", "base_url": "u", "model": "m", "request_seed": "sometimes"}, "true, false or auto"),
        ({"engine": "vllm", "request_seed": True}, "are for server engines"),
    ],
)
def test_vllm_and_seed_keys_are_checked(entry, message):
    from rs_trainer.errors import ConfigError
    from rs_trainer.generators import parse_generators

    with pytest.raises(ConfigError, match=message):
        parse_generators([{"name": "policy", **entry}], 4)


def test_wrong_model_name_is_refused_before_sampling(tiny_model, server, tmp_path, capsys):
    out = tmp_path / "o"
    gens = [{"name": "policy"}, teacher(server.base_url, tmp_path / "no-such-model")]
    code, err = run(write_recipe(tmp_path / "r.yaml", recipe_args(tiny_model, out), gens), capsys)
    assert code == 2, err
    assert "does not serve model" in err and "no-such-model" in err and server.base_url in err
    assert not out.exists() or not any(out.iterdir())


def test_policy_and_teacher_round(tiny_model, sampling_model, server, tmp_path, capsys):
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        dataset_test_split=None,
        selection="best_of_n",
        selection_top_k=None,
        reward_funcs=["tests.scorers_for_tests.prefers_teacher"],
        report_to="none",
    )
    gens = [
        {"name": "policy", "num_generations": 2},
        teacher(server.base_url, sampling_model, max_concurrency=4),
    ]
    code, err = run(write_recipe(tmp_path / "r.yaml", argv, gens), capsys)
    assert code == 0, err
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    keys = [(x["round"], x["prompt_id"], x["generator"], x["sample_index"]) for x in rows]
    assert len(keys) == len(set(keys)) == 6 * 4
    for x in rows:  # the recipe's order gives each generator its sample indices
        assert x["sample_index"] in ((0, 1) if x["generator"] == "policy" else (2, 3))
    served = [x for x in rows if x["generator"] == "teacher"]
    assert all(x["finish_reason"] in ("stop", "length") and x["completion_tokens"] > 0 for x in served)
    by_prompt = {}
    for x in served:
        by_prompt.setdefault(x["prompt_id"], set()).add(x["completion"])
    assert any(len(texts) > 1 for texts in by_prompt.values()), "the server returned identical samples"
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    assert metrics["gen/teacher/selected_share"] == 1.0 and metrics["gen/policy/selected_share"] == 0.0
    assert metrics["gen/teacher/pass_rate"] == 1.0 and metrics["gen/policy/reward_mean"] == 0.0
    assert metrics["gen/teacher/tokens_per_s"] > 0 and metrics["gen/policy/samples"] == 12
    pairs = dpo_pairs(rows)
    assert pairs and all(p["chosen_generator"] == "teacher" and p["rejected_generator"] == "policy" for p in pairs)


def test_policy_behind_a_managed_server(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    argv = two_lora_rounds(tiny_model, out)
    command = f"{SERVE} serve --host {{host}} --port {{port}} --device cpu"
    gens = [{"name": "policy", "engine": "server", "command": command, "startup_timeout": SERVER_STARTUP_S}]
    code, err = run(write_recipe(tmp_path / "r.yaml", argv, gens), capsys)
    assert code == 0, err
    for r in range(2):
        rows = read_jsonl(out / f"round_{r}" / "generations.jsonl")
        assert len(rows) == 12 and {x["generator"] for x in rows} == {"policy"}
        log = (out / f"round_{r}" / "server-policy.log").read_text()
        assert f"round_{r}/served_model" in log  # round 1 served the weights round 0 trained, merged
        assert not (out / f"round_{r}" / "served_model").exists()  # removed once the round had sampled
    assert json.loads((out / "round_1" / "metrics.json").read_text())["train/steps"] > 0


def test_server_killed_mid_round_then_resumed(tiny_model, sampling_model, tmp_path):
    port = free_port()
    srv = Server(tmp_path / "server", port).start()
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        task_num_train=16,
        dataset_test_split=None,
        report_to="none",
        selection_top_k=8,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
        max_completion_length=24,
    )
    gens = [
        {"name": "policy", "num_generations": 1},
        teacher(srv.base_url, sampling_model, max_concurrency=1, max_retries=1, timeout=20, num_generations=2),
    ]
    argv = write_recipe(tmp_path / "r.yaml", argv, gens)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rs_trainer", *argv]
    shard = out / "round_0" / "shards" / "generations.rank0.jsonl"
    try:  # the run and the server end with the test, however it ends
        with started(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            deadline = time.monotonic() + 300
            while sum(x["generator"] == "teacher" for x in read_jsonl_prefix(shard)) < 6:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "fewer than 6 teacher rows after 300 s"
                time.sleep(0.05)
            srv.stop()  # the server dies mid-round
            _, err = proc.communicate(timeout=300)
    finally:
        srv.stop()
    assert proc.returncode == 1, err[-3000:]
    assert "rs_trainer: error: generator 'teacher'" in err and "rerun the same command" in err
    assert "Traceback" not in err
    before = {(x["generator"], x["prompt_id"], x["sample_index"]): x["generated_at"] for x in read_jsonl_prefix(shard)}
    assert 6 <= sum(k[0] == "teacher" for k in before) < 32

    srv = Server(tmp_path / "server", port).start()  # the same endpoint comes back
    try:
        proc = run_group(cmd, timeout=600, env=env)
    finally:
        srv.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    keys = [(x["generator"], x["prompt_id"], x["sample_index"]) for x in rows]
    assert len(keys) == len(set(keys)) == 16 * 3  # nothing lost, nothing doubled
    final = {(x["generator"], x["prompt_id"], x["sample_index"]): x["generated_at"] for x in rows}
    complete = {k for k in before if k[0] == "policy"}  # policy rows were all done before the kill
    assert all(final[k] == before[k] for k in complete)
    teacher_done = {}
    for k in before:
        if k[0] == "teacher":
            teacher_done.setdefault(k[1], []).append(k)
    reused = [k for ks in teacher_done.values() if len(ks) == 2 for k in ks]
    assert reused and all(final[k] == before[k] for k in reused)  # finished requests were not sent again


def test_a_server_that_does_not_sample_is_reported(tiny_model, server):
    """The tiny model's own generation config does not sample, so `transformers serve` decodes greedily."""
    from rs_trainer.generators.openai_client import OpenAIGenerator
    from rs_trainer.generators.spec import GeneratorSpec
    from rs_trainer.phases.generation import SamplingParams, encode_prompts
    from rs_trainer.run.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    prompts = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(4)]
    spec = GeneratorSpec(name="greedy", engine="openai", base_url=server.base_url, model=str(tiny_model))
    generator = OpenAIGenerator(spec, server.base_url, str(tiny_model), tok)
    with pytest.warns(UserWarning, match="probably not sampling"):
        rows = generator.generate(
            prompts, encode_prompts(tok, prompts), 2, SamplingParams(temperature=1.0, max_new_tokens=4)
        )
    assert len(rows) == 8 and [r["sample_index"] for r in rows[:2]] == [0, 1]


def test_adapter_endpoints_follow_each_servers_documented_api():
    from rs_trainer.generators.openai_client import adapter_endpoint

    assert adapter_endpoint("http://h:8000/v1", "vllm", "load") == "http://h:8000/v1/load_lora_adapter"
    assert adapter_endpoint("http://h:30000/v1/", "sglang", "unload") == "http://h:30000/unload_lora_adapter"


def test_adapter_hot_load_needs_lora(tiny_model, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    gens = [{"name": "policy", "engine": "openai", "base_url": url, "model": "base", "adapter_api": "vllm"}]
    code, err = run(write_recipe(tmp_path / "r.yaml", recipe_args(tiny_model, tmp_path / "o"), gens), capsys)
    assert code == 2 and "`adapter_api` loads each round's LoRA adapter" in err and "use_peft: true" in err, err


def test_adapter_hot_load_against_a_server_without_that_api(tiny_model, sampling_model, server, tmp_path, capsys):
    """Round 0 samples the base model behind the endpoint; round 1 asks the server to load round 0's adapter.
    `transformers serve` has no adapter-loading endpoint, and the run stops there with the URL and the answer."""
    out = tmp_path / "o"
    argv = two_lora_rounds(tiny_model, out)
    gens = [{**teacher(server.base_url, sampling_model), "name": "policy", "adapter_api": "vllm"}]
    code, err = run(write_recipe(tmp_path / "r.yaml", argv, gens), capsys)
    assert code == 1, err
    assert f"POST {server.base_url}/load_lora_adapter (policy-round0) answered 404" in err, err
    assert (out / "round_0" / "metrics.json").exists()  # round 0 sampled the base model through the endpoint
    assert {x["generator"] for x in read_jsonl(out / "round_0" / "generations.jsonl")} == {"policy"}
    assert not (out / "round_1" / "generations.jsonl").exists()


# A fixed KV cache: on the CPU, transformers serve's continuous batching otherwise takes 90% of the machine's free
# RAM for it (`max_memory_percent` of psutil's total): 18.5 GB on a 24 GB machine, the whole suite's peak.
CB_CACHE = "--cb-num-blocks 16 --cb-max-batch-tokens 512"


def test_a_continuous_batching_server_samples_at_the_recipes_temperature(tiny_model, tmp_path, capsys):
    """`transformers serve --continuous-batching` keeps its first request's sampling values for every request;
    the endpoint check is that first request, and it carries the round's temperature. At 0.01 the tiny model's
    samples of a prompt are all the same; at the server's default of 1.0 they would differ."""
    out = tmp_path / "o"
    argv = recipe_args(
        tiny_model,
        out,
        num_generations=3,
        temperature=0.01,
        max_completion_length=6,
        dataset_test_split=None,
        report_to="none",
        selection_top_k=6,
        reward_funcs=["tests.scorers_for_tests.length_reward"],
    )
    command = f"{SERVE} serve --host {{host}} --port {{port}} --device cpu --continuous-batching {CB_CACHE}"
    gens = [{"name": "policy", "engine": "server", "command": command, "startup_timeout": SERVER_STARTUP_S}]
    code, err = run(write_recipe(tmp_path / "r.yaml", argv, gens), capsys)
    assert code == 0, err
    by_prompt = {}
    for x in read_jsonl(out / "round_0" / "generations.jsonl"):
        by_prompt.setdefault(x["prompt_id"], set()).add(x["completion"])
    assert len(by_prompt) == 6 and all(len(texts) == 1 for texts in by_prompt.values()), by_prompt


@pytest.mark.parametrize(("top_k", "min_p"), [(0, 0.0), (5, 0.1)])
def test_the_served_model_samples_with_the_rounds_top_k_and_no_default_one(tiny_model, tmp_path, top_k, min_p):
    """A server reads its sampling defaults from the folder's generation config: `transformers serve` takes no
    `top_k` in a request and would apply transformers' default of 50, which in-process sampling does not."""
    import torch
    from transformers import AutoTokenizer

    from rs_trainer.generators.checks import write_served_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    folder = write_served_model(tmp_path / "served", str(tiny_model), None, torch.float32, tokenizer, top_k, min_p)
    config = json.loads((tmp_path / "served" / "generation_config.json").read_text())
    assert folder == str(tmp_path / "served")
    assert config["do_sample"] is True and config["top_k"] == top_k
    assert config.get("min_p") == (min_p or None)
