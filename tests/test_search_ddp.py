"""The search and the retraining under torchrun: real processes, real gloo on loopback, no mocks.

Two ranks with ``--batch-size 8`` (4 images per rank; ``--batch-size`` is the global batch) must
compute what one process computes with ``--batch-size 8``: the same α and weights up to the float
reduction order (tolerance rtol 1e-4, atol 5e-5 on every
tensor of the checkpoint, 1e-2/1e-3 on BatchNorm running statistics). Tiny budgets as
in test_search.py: width 0.35, 16×16 Fashion-MNIST, a LUT of FLOP-derived latencies.

Why ``--lambda2 10`` in gradient mode: at the start the candidates of a layer compute the same
function (align_init), so the CE part of α's gradient is ~0 and Adam (which divides by |g|) would
turn float noise into ±lr steps; a large latency weight makes every sampled pair's gradient clearly
non-zero, while its CE part (which differs per shard) still has to be averaged over the ranks.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latbench.space import Space
from predictors import LUTPredictor, save_predictor
from search.latency import flops_latencies
from search.run import main as search_main
from search.supernet import Supernet
from search.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # per launch; a healthy one takes ~30 s on a busy 2-core box
RTOL, ATOL = 1e-4, 5e-5  # float reduction order (shard sums all-reduced); a wrong all-reduce is off by ~1e-2
BN_RTOL, BN_ATOL = 1e-2, 1e-3
SEARCH_FILES = {"arch.json", "net.config", "log.csv", "checkpoint.pt", "summary.json"}
TRAIN_FILES = {"log.csv", "checkpoint.pt", "summary.json"}
#: Runs a module as ``python -m`` would, with ``{rank}`` in the arguments replaced by torchrun's RANK
#: (to give each rank its own --out or --arch).
PER_RANK = """import os, runpy, sys
import torch
torch.backends.mkldnn.enabled = False  # see one_thread()
sys.argv = [sys.argv[1]] + [a.replace("{rank}", os.environ["RANK"]) for a in sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread and PyTorch's own convolutions, here and in every rank: oneDNN picks its kernels by batch
    size, so 4 images per rank and 8 in one process round differently (seen on an AVX-512 Xeon: 3e-4 apart
    after the steps of the search) and the comparison would measure oneDNN, not the all-reduce."""
    n, dnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.set_num_threads(n)
    torch.backends.mkldnn.enabled = dnn


@pytest.fixture(scope="module")
def lut_file(tmp_path_factory) -> Path:
    pred = LUTPredictor.from_latencies(flops_latencies(Space(224, 0.35)), resolution=224, width_mult=0.35,
                                       n_classes=1000)
    path = tmp_path_factory.mktemp("pred") / "lut.pkl"
    save_predictor(pred, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(target: list[str], args: list[str], nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node N ... <target> <args>`` on loopback."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *target, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def per_rank(tmp_path: Path, module: str) -> list[str]:
    script = tmp_path / "per_rank.py"
    script.write_text(PER_RANK)
    return [str(script), module]


def assert_close_states(one: dict, two: dict) -> None:
    assert one.keys() == two.keys()
    for k in one:
        a, b = one[k], two[k]
        if a.dtype.is_floating_point:
            # BN running statistics come from per-rank sums (variance from sums of squares): coarser than
            # the weights, still far finer than per-rank statistics (4 vs 8 images: ~10 % apart) would be.
            rtol, atol = (BN_RTOL, BN_ATOL) if k.endswith(("running_mean", "running_var")) else (RTOL, ATOL)
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a, b), k


SEARCH = ["--epochs", "1", "--warmup-epochs", "0", "--train-batches", "4", "--val-batches", "1",
          "--test-batches", "1", "--batch-size", "8", "--resolution", "16", "--arch-every", "1", "--threads", "1"]


@pytest.mark.parametrize("mode", [["--lambda2", "10"],
                                  ["--mode", "reinforce", "--target-latency", "1.5", "--rl-samples", "3",
                                   "--arch-lr", "0.05"]], ids=["gradient", "reinforce"])
def test_search_on_two_ranks_matches_one_process_and_only_rank0_writes(lut_file, tmp_path, mode, capsys):
    args = ["--predictor", str(lut_file), *SEARCH, *mode]
    r = torchrun(per_rank(tmp_path, "search.run"), args + ["--out", str(tmp_path / "ddp{rank}")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("arch.json: predicted") == 1, r.stdout  # the result line: rank 0 only
    assert "rank 1:" not in r.stderr, r.stderr  # rank 1 logs warnings only, and there are none
    assert {p.name for p in (tmp_path / "ddp0").iterdir()} == SEARCH_FILES
    assert not (tmp_path / "ddp1").exists()  # rank 1 wrote nothing

    assert search_main(args + ["--out", str(tmp_path / "one")]) == 0  # one process, the same global batch
    capsys.readouterr()
    two = torch.load(tmp_path / "ddp0" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    torch.manual_seed(0)  # the search's initial α (seed 0), to see that α did move
    start = Supernet(Space(16, 0.35, 10, 1)).state_dict()
    moved = max(float((one["net"][k] - start[k]).abs().max()) for k in start if k.endswith(".alpha"))
    assert moved > 1e-3, moved  # a trivial agreement would say nothing
    assert_close_states(one["net"], two["net"])  # α and every weight and BN buffer
    assert json.loads((tmp_path / "ddp0" / "arch.json").read_text()) == json.loads(
        (tmp_path / "one" / "arch.json").read_text())
    row1, row2 = one["history"][-1], two["history"][-1]
    assert abs(row1["train_loss"] - row2["train_loss"]) < 1e-4 and row1["arch_steps"] == row2["arch_steps"] == 4
    if "--mode" in mode:
        assert row1["reward"] == pytest.approx(row2["reward"], abs=1e-6)  # rewards from the global batch


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("arch")
    space = Space(224, 0.35)
    a = space.arch([layer.candidates[0] for layer in space.layers]).save(d / "a0.json")
    b = space.arch([layer.candidates[-1] for layer in space.layers]).save(d / "a1.json")
    return a, b


TRAIN = ["--epochs", "2", "--train-batches", "2", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
         "--resolution", "16", "--threads", "1"]


@pytest.fixture(scope="module")
def searched(lut_file, tmp_path_factory) -> Path:
    """A tiny one-process search: OUT/arch.json and the supernet OUT/checkpoint.pt."""
    d = tmp_path_factory.mktemp("search")
    assert search_main(["--predictor", str(lut_file), *SEARCH, "--train-batches", "2", "--out", str(d)]) == 0
    return d


def test_retrain_on_two_ranks_matches_one_process(searched, tmp_path, capsys):
    """From the supernet's weights at a small lr: this tiny network at 16 px (1×1 maps at the end, BN
    over 8 values) turns float noise into visible differences after ~5 steps at the default lr, one
    process with 1 vs 2 threads as much as 2 ranks vs 1 process; 4 steps at lr 1e-3 stay at the
    float noise (~2e-7 on the weights)."""
    args = ["--arch", str(searched / "arch.json"), "--init", "supernet", "--lr", "0.001", *TRAIN]
    r = torchrun(per_rank(tmp_path, "search.train"), args + ["--out", str(tmp_path / "ddp")])  # oneDNN off there too
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("retrained") == 1, r.stdout
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == TRAIN_FILES  # no stray .tmp of a second writer
    assert train_main(args + ["--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    two = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert_close_states(one["net"], two["net"])
    for row1, row2 in zip(one["history"], two["history"], strict=True):
        assert abs(row1["train_loss"] - row2["train_loss"]) < 1e-4, (row1, row2)


def test_ranks_disagreeing_on_the_arch_exit_with_one_line(arch_files, tmp_path):
    arch = str(arch_files[0]).replace("a0.json", "a{rank}.json")  # rank 0: a0.json, rank 1: a1.json
    r = torchrun(per_rank(tmp_path, "search.train"), ["--arch", arch, *TRAIN, "--out", str(tmp_path / "r{rank}")])
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ranks disagree on the arch" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr.split("error:")[0]  # no traceback from our processes
    assert not (tmp_path / "r0").exists() and not (tmp_path / "r1").exists()


def test_global_batch_must_split_over_the_ranks(lut_file, tmp_path):
    r = torchrun(["-m", "search.run"], ["--predictor", str(lut_file), *SEARCH, "--batch-size", "7",
                                        "--out", str(tmp_path / "o")])
    assert r.returncode == 2 or "exitcode  : 2" in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--batch-size 7" in errors[0], r.stderr[-3000:]
