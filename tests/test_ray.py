"""`--ray` on a real local Ray cluster (2 CPUs, started here): bench rows and DGA rollouts equal the local run's,
through a killed driver and a killed worker; without Ray installed, one line names the extra."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dgalign.cluster import RayOptions, actor_options, parse_resources
from dgalign.errors import DGAlignError
from dgalign.eval import harness
from dgalign.eval.harness import BenchConfig, read_rows, run_bench
from dgalign.eval.ray_bench import ray_rows
from dgalign.train.dga import TrainConfig, Tuples, join_tuples, shard_generator, shard_prompts
from dgalign.types import Prompts
from test_bench import TOY_REWARD, _key, toy_config

TIMING = {"cost", "extras"}  # what differs between two runs of a row: wall time, memory, CPU seconds


def _env() -> dict:
    """The environment now: after `ray.init` it holds what another driver needs to join (RAY_AUTH_MODE)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster: 2 CPUs, a small object store, no dashboard; its address for other drivers."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _same_rows(a: list[dict], b: list[dict]) -> None:
    """Row for row the same (matched by (prompt, method, seed)), timing and cost apart; none lost or doubled."""
    assert len({_key(r) for r in a}) == len(a) and len({_key(r) for r in b}) == len(b)
    first = {_key(r): {k: v for k, v in r.items() if k not in TIMING} for r in a}
    second = {_key(r): {k: v for k, v in r.items() if k not in TIMING} for r in b}
    assert first.keys() == second.keys()
    for key, row in first.items():
        assert row == second[key], key
    assert not any(r.get("error") for r in a + b)


def test_toy_bench_on_two_workers_equals_the_local_run(cluster, prompts_file, tmp_path):
    local = read_rows(run_bench(toy_config(prompts_file, tmp_path / "local"), progress=False))
    path = run_bench(toy_config(prompts_file, tmp_path / "ray"), progress=False, runner=ray_rows(RayOptions(workers=2)))
    _same_rows(local, read_rows(path))
    invocation = json.loads(path.with_name("toy-prompts.manifest.json").read_text())["invocations"][-1]
    assert invocation["ray"]["workers"] == 2 and len({w["pid"] for w in invocation["ray"]["worker_setup"]}) == 2
    assert set(invocation["setup"]) == {"load_s", "reward_load_s", "warmup_s"}
    rerun = run_bench(toy_config(prompts_file, tmp_path / "ray"), progress=False, runner=ray_rows(RayOptions()))
    assert len(read_rows(rerun)) == len(local)  # complete: resuming adds nothing


def test_a_model_the_workers_cannot_load_is_one_error_before_anything_is_written(cluster, prompts_file, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DGAlignError, match="^a Ray worker could not load the run: /.*empty is not a model directory"):
        run_bench(toy_config(prompts_file, tmp_path / "run", model=str(tmp_path / "empty")), progress=False,
                  runner=ray_rows(RayOptions(workers=2)))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_llama_bench_on_two_workers_equals_the_local_run(cluster, tiny_llama, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello there\nThe sky is\nOnce upon a time\n")
    cfg = dict(suite=str(prompts), methods=["base", "bon:n=2", "dga:top_m=16:steps=3"], n_prompts=3,
               max_new_tokens=4, seeds=[0], model=tiny_llama, reward="length", ppl_model="", device="cpu", raw=True)
    local = read_rows(run_bench(BenchConfig(out=str(tmp_path / "local"), **cfg), progress=False))
    on_ray = read_rows(run_bench(BenchConfig(out=str(tmp_path / "ray"), **cfg), progress=False,
                                 runner=ray_rows(RayOptions(workers=2))))
    _same_rows(local, on_ray)


def _bench_args(prompts_file, out, *extra):
    return [sys.executable, "-m", "dgalign", "bench", "--suite", str(prompts_file), "--model", "toy", "--reward",
            TOY_REWARD, "--methods", "base,bon:n=2", "--n-prompts", "60", "--max-new-tokens", "3", "--seeds", "0,1",
            "--no-ppl", "--out", str(out), *extra]


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_uninterrupted_result(cluster, prompts_file, tmp_path):
    """SIGKILL `dgalign bench --ray ADDRESS` mid-grid, run it again: the local run's rows, each once."""
    prompts_file.write_text("\n".join(["ab", "ba", "c", "abc", "cab", "b"] * 10) + "\n")
    subprocess.run(_bench_args(prompts_file, tmp_path / "local"), env=_env(), check=True, capture_output=True)
    args = _bench_args(prompts_file, tmp_path / "ray", "--ray", cluster, "--workers", "2")
    path = tmp_path / "ray" / "toy-prompts.jsonl"
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(read_rows(path)) < 20:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_rows(path))
    done = subprocess.run(args, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 20 <= partial < 60 * 2 * 2
    _same_rows(read_rows(tmp_path / "local" / "toy-prompts.jsonl"), read_rows(path))


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_its_rows_run_again(cluster, prompts_file, tmp_path, monkeypatch):
    """SIGKILL one actor's process after a few rows: Ray restarts it, retries what it held; the rows equal local."""
    prompts_file.write_text("\n".join(["ab", "ba", "c", "abc", "cab", "b"] * 4) + "\n")
    cfg = dict(n_prompts=24, methods=["base", "bon:n=2", "dga:steps=4"], seeds=[0])
    local = read_rows(run_bench(toy_config(prompts_file, tmp_path / "local", **cfg), progress=False))
    real, written, killed = harness._append, [], []

    def append_then_kill(f, row):
        real(f, row)
        written.append(row)
        if len(written) == 6:
            manifest = json.loads((tmp_path / "ray" / "toy-prompts.manifest.json").read_text())
            pid = manifest["invocations"][-1]["ray"]["worker_setup"][0]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    monkeypatch.setattr(harness, "_append", append_then_kill)
    rows = read_rows(run_bench(toy_config(prompts_file, tmp_path / "ray", **cfg), progress=False,
                               runner=ray_rows(RayOptions(workers=2))))
    assert killed and len(written) == len(local) == 24 * 3
    _same_rows(local, rows)


@pytest.mark.slow
def test_train_on_ray_writes_the_local_sharded_checkpoint_which_loads_and_samples(cluster, tmp_path):
    from dgalign.eval.exact import toy_reward
    from dgalign.lm import ToyLM
    from dgalign.samplers import get_sampler
    from dgalign.samplers.dga.checkpoint import DGANets

    (tmp_path / "p.txt").write_text("ab\nba\nabc\nc\nb\ncab\n")
    train = [sys.executable, "-m", "dgalign", "train", "--model", "toy", "--reward", TOY_REWARD, "--prompts",
             str(tmp_path / "p.txt"), "--tiny"]
    subprocess.run([*train, "--ray", cluster, "--workers", "2", "--out", str(tmp_path / "ray")], env=_env(), check=True,
                   capture_output=True)
    subprocess.run([*train, "--set", "rollout_shards=2", "--out", str(tmp_path / "local")], env=_env(), check=True,
                   capture_output=True)
    on_ray, local = DGANets.load(tmp_path / "ray"), DGANets.load(tmp_path / "local")
    assert on_ray.meta["train"]["rollout_shards"] == 2 and on_ray.meta["tuples"] == local.meta["tuples"] > 0
    for name, mod in on_ray.modules().items():  # same seed, same shards: the same nets
        for (k, a), (_, b) in zip(mod.state_dict().items(), local.modules()[name].state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}.{k}"
    lm = ToyLM()
    sample, cfg = get_sampler("dga")
    cfg.checkpoint, cfg.max_new_tokens = str(tmp_path / "ray"), 3
    out = sample(lm, toy_reward, Prompts.encode(lm, ["ab"]), cfg, generator=torch.Generator().manual_seed(0))
    assert len(out.texts) == 1 and out.num_tokens[0] >= 1


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    from dgalign import cli

    monkeypatch.setattr(sys, "argv", ["dgalign", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


def test_without_ray_installed_the_flag_names_the_extra(prompts_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, err = _cli(monkeypatch, capsys, "bench", "--suite", str(prompts_file), "--model", "toy", "--reward",
                     TOY_REWARD, "--methods", "base", "--no-ppl", "--out", str(tmp_path / "x"), "--ray")
    # one error line (a Ray worker of an earlier test in this process may still print its own log lines)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert "--ray needs Ray" in errors[0] and "pip install 'dgalign[ray]'" in errors[0]
    assert not (tmp_path / "x").exists()


def test_the_local_path_does_not_import_ray(prompts_file, tmp_path):
    code = ("import sys; from dgalign.eval.harness import BenchConfig, run_bench; "
            f"run_bench(BenchConfig(suite={str(prompts_file)!r}, out={str(tmp_path / 'run')!r}, methods=['base'], "
            f"n_prompts=2, max_new_tokens=2, model='toy', reward={TOY_REWARD!r}, ppl_model=''), progress=False); "
            "import dgalign.cli, dgalign.eval.ray_bench, dgalign.train.ray_collect; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, capture_output=True)


def test_worker_options_and_flags_are_checked(monkeypatch, capsys):
    assert parse_resources('{"GPU": 1, "CPU": 2}') == {"GPU": 1.0, "CPU": 2.0}
    for bad in ("[1]", '{"CPU": -1}', '{"CPU": "one"}', "nope"):
        with pytest.raises(DGAlignError, match="--worker-resources must be a JSON object"):
            parse_resources(bad)
    opts = actor_options(RayOptions(resources={"GPU": 1, "CPU": 2, "memory": 2**30, "accelerator": 1}))
    assert (opts["num_cpus"], opts["num_gpus"], opts["memory"], opts["resources"]) == (2, 1, 2**30, {"accelerator": 1})
    assert opts["max_task_retries"] == -1 and opts["runtime_env"]["env_vars"]["TQDM_DISABLE"] == "1"
    for extra, message in [(["--workers", "3"], "--workers and --worker-resources need --ray"),
                           (["--ray", "--workers", "0"], "--workers must be at least 1"),
                           (["--ray", "auto", "--worker-resources", "CPU=1"], "--worker-resources must be a JSON")]:
        code, err = _cli(monkeypatch, capsys, "bench", "--suite", "x.txt", "--out", "o", "--methods", "base", *extra)
        assert code == 2 and message in err, err


def test_shards_cover_the_prompts_in_order_and_join_with_pooled_statistics():
    prompts = Prompts([f"p{i}" for i in range(7)], [[i] for i in range(7)])
    shards = shard_prompts(prompts, 3)
    assert [s.texts for s in shards] == [["p0", "p1"], ["p2", "p3"], ["p4", "p5", "p6"]]
    assert len(shard_prompts(prompts, 10)) == 7  # no empty shards
    draw = [torch.rand(3, generator=shard_generator(5, k)) for k in (0, 1, 0)]
    assert torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[1])  # fixed by (seed, index) alone

    def part(rewards: list[float]) -> Tuples:
        r = torch.tensor(rewards)
        n = len(r)
        return Tuples(torch.zeros(n, 2), torch.zeros(n, 3, dtype=torch.long), torch.zeros(n, 3),
                      torch.zeros(n, dtype=torch.long), r, torch.zeros(n, 3),
                      {"completions": n, "reward_mean": float(r.mean()), "reward_std": float(r.std()) if n > 1 else
                       float("nan"), "reward_calls": 2 * n, "lm_forward_tokens": 10 * n})

    rewards = [[0.5, -1.0, 2.0], [3.0], [1.5, 0.25]]
    joined = join_tuples([part(r) for r in rewards])
    every = torch.tensor([x for r in rewards for x in r])
    assert torch.equal(joined.reward, every) and joined.hidden.shape == (6, 2)
    assert joined.meta["completions"] == 6 and joined.meta["reward_calls"] == 12
    assert joined.meta["reward_mean"] == pytest.approx(float(every.mean()))
    assert joined.meta["reward_std"] == pytest.approx(float(every.std()))
    assert TrainConfig().rollout_shards == 1  # one unsharded stream unless asked
