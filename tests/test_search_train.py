"""Retraining a searched network (``search.train`` / ``latbench train``): learns, resumes, inherits, rejects.

Tiny budgets on real Fashion-MNIST: width 0.35, a LUT of FLOP-derived latencies (real LUTPredictor)."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from latbench.space import Space
from predictors import LUTPredictor, save_predictor
from search.data import load_fashion_mnist
from search.latency import flops_latencies
from search.run import main as search_main
from search.train import Retrainer, TrainConfig, build_net, main, train_space

WIDTH = 0.35


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A (tiny) search at 16 px: OUT/arch.json and OUT/checkpoint.pt."""
    d = tmp_path_factory.mktemp("search")
    pred = LUTPredictor.from_latencies(flops_latencies(Space(224, WIDTH)), resolution=224, width_mult=WIDTH,
                                       n_classes=1000)
    save_predictor(pred, d / "lut.pkl")
    assert search_main(["--predictor", str(d / "lut.pkl"), "--out", str(d), "--epochs", "1", "--warmup-epochs", "0",
                        "--train-batches", "2", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
                        "--resolution", "16", "--arch-every", "1"]) == 0
    return d


def test_retrain_from_scratch_learns_and_writes_its_files(searched, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["--arch", str(searched / "arch.json"), "--out", str(out), "--epochs", "1", "--train-batches", "60",
                 "--val-batches", "2", "--test-batches", "8", "--batch-size", "64", "--resolution", "28"]) == 0
    assert "test acc" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.45, summary  # chance is 0.10
    assert summary["init"] == "scratch" and summary["train_resolution"] == 28
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["train_loss"]) < 2.0
    assert (out / "checkpoint.pt").exists()


def test_resume_continues_bit_for_bit(searched, tmp_path):
    common = ["--arch", str(searched / "arch.json"), "--epochs", "2", "--train-batches", "3", "--val-batches", "1",
              "--test-batches", "1", "--batch-size", "8", "--resolution", "16"]
    assert main(common + ["--out", str(tmp_path / "full")]) == 0
    data = load_fashion_mnist(16)
    from latbench.space import Arch
    arch = Arch.load(searched / "arch.json")
    cfg = TrainConfig(arch=",".join(arch.ops), epochs=2, train_batches=3, val_batches=1, test_batches=1,
                      batch_size=8, resolution=16)
    torch.manual_seed(0)
    killed = Retrainer(cfg, build_net(train_space(arch, data, 16), arch.ops), data, tmp_path / "part")
    killed.train_epoch()  # killed after the first epoch's checkpoint
    assert main(common + ["--out", str(tmp_path / "part"), "--resume"]) == 0

    def rows(d):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(d / "log.csv"))]

    assert rows(tmp_path / "full") == rows(tmp_path / "part") and len(rows(tmp_path / "full")) == 2
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["net"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_supernet_inherits_the_path_weights(searched, tmp_path):
    from latbench.space import Arch
    from search.train import net_from_supernet

    arch = Arch.load(searched / "arch.json")
    space = train_space(arch, load_fashion_mnist(16), 16)
    net = net_from_supernet(space, arch.ops, searched / "checkpoint.pt")
    state = torch.load(searched / "checkpoint.pt", weights_only=True)["net"]
    assert torch.equal(net[0][0].weight, state["stem.0.weight"])
    first = next(i for i, op in enumerate(arch.ops) if op != "zero")
    c = space.layers[first].candidates.index(arch.ops[first])
    assert torch.equal(net[1][0].project[0].weight, state[f"layers.{first}.ops.{c}.project.0.weight"])
    assert torch.equal(net[3].linear.weight, state["classifier.linear.weight"])
    assert main(["--arch", str(searched / "arch.json"), "--init", "supernet", "--out", str(tmp_path), "--epochs", "1",
                 "--train-batches", "2", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
                 "--resolution", "16"]) == 0


def test_bad_input_is_one_line(searched, tmp_path, capsys):
    # the supernet was trained at 16 px: retraining it at 28 px cannot inherit its weights
    assert main(["--arch", str(searched / "arch.json"), "--init", "supernet", "--out", str(tmp_path),
                 "--resolution", "28"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "16 px" in err and "\n" not in err
    # an arch of another width than the supernet
    other = json.loads((searched / "arch.json").read_text())
    other["width_mult"] = 0.5
    (tmp_path / "w.json").write_text(json.dumps(other))
    assert main(["--arch", str(tmp_path / "w.json"), "--init", "supernet", "--supernet",
                 str(searched / "checkpoint.pt"), "--out", str(tmp_path), "--resolution", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another width" in err and "\n" not in err
    assert main(["--arch", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_latbench_train_subcommand(searched, tmp_path, capsys):
    from latbench.cli import main as latbench_main

    assert latbench_main(["train", "--arch", str(searched / "arch.json"), "--out", str(tmp_path), "--epochs", "1",
                          "--train-batches", "1", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
                          "--resolution", "16"]) == 0
    assert "test acc" in capsys.readouterr().out
    assert latbench_main(["train", "--arch", str(searched / "arch.json"), "--label-smoothing", "1.5",
                          "--out", str(tmp_path)]) == 2
