"""ProxylessNAS search on the NAS-Bench-201 cell space: E[LAT] = predict, gradient and REINFORCE searches that
write official arch strings and indices, α following a strong latency weight, resume, retraining, bad input.

Real torch and Fashion-MNIST at 16 px (the cells are resolution-free), batches of 8, one thread; the predictor
is a real ``LUTPredictor`` of FLOP-derived latencies of every timed NAS-Bench-201 op."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from latbench.nasbench201 import NB201_EDGES, NB201_OPS, nb201_resolve, parse_nb201
from latbench.space import Space
from predictors import LUTPredictor, save_predictor
from search.data import load_fashion_mnist
from search.latency import NB201LatencyModel, nb201_flops_latencies
from search.nb201 import NB201Supernet, nb201_net
from search.run import main as search_main
from search.train import main as train_main
from search.trainer import ProxylessSearch, SearchConfig

RES = 16
TINY = ["--val-batches", "1", "--test-batches", "1", "--batch-size", "8", "--resolution", str(RES),
        "--arch-every", "1", "--arch-lr", "0.05"]
ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def predictor() -> LUTPredictor:
    return LUTPredictor.from_latencies(nb201_flops_latencies(), resolution=None, width_mult=None, n_classes=None)


@pytest.fixture(scope="module")
def lut_file(predictor, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "nb201.pkl"
    save_predictor(predictor, path)
    return path


@pytest.fixture(scope="module")
def data():
    return load_fashion_mnist(RES)


@pytest.fixture(scope="module")
def searched(lut_file, tmp_path_factory):
    """A tiny gradient search (1 warm-up epoch, 1 search epoch of 3 weight + 3 arch steps)."""
    out = tmp_path_factory.mktemp("search")
    assert search_main(["--predictor", str(lut_file), "--out", str(out), "--epochs", "2", "--warmup-epochs", "1",
                        "--train-batches", "3"] + TINY) == 0
    return out


def onehot(choices: list[int]) -> list[torch.Tensor]:
    return [torch.nn.functional.one_hot(torch.tensor(c), len(NB201_OPS)).float() for c in choices]


def check_arch_file(path, predictor) -> dict:
    arch = json.loads(path.read_text())
    assert set(arch) == {"space", "arch_str", "arch_index"} and arch["space"] == "nasbench201"
    assert len(parse_nb201(arch["arch_str"])) == len(NB201_EDGES)
    assert nb201_resolve(arch["arch_index"]) == (arch["arch_index"], arch["arch_str"])  # index <-> string
    assert nb201_resolve(arch["arch_str"])[0] == arch["arch_index"]
    return arch


@pytest.mark.parametrize("calibrated", [False, True])
def test_expected_latency_of_one_hot_alpha_is_predict(predictor, calibrated):
    pred = predictor
    if calibrated:  # scale and offset folded into the tables and the fixed part
        pred = LUTPredictor.from_latencies(nb201_flops_latencies(), resolution=None, width_mult=None, n_classes=None)
        archs = [nb201_resolve(i)[1] for i in (3, 900, 4000, 12000)]
        pred.fit_calibration(archs, [2.0 * float(predictor.predict(a)) + 0.5 for a in archs], mode="affine")
        assert pred.scale_ == pytest.approx(2.0) and pred.offset_ == pytest.approx(0.5)
    model = NB201LatencyModel(pred)
    assert len(model.tables) == len(NB201_EDGES) and model.tables[0][NB201_OPS.index("skip_connect")] == 0
    for i in (0, 1462, 7213, 15624, nb201_resolve(ALL_CONV3)[0]):
        arch_str = nb201_resolve(i)[1]
        choices = [NB201_OPS.index(o) for o in parse_nb201(arch_str)]
        want = float(pred.predict(arch_str))
        assert model.expected_from_probs(onehot(choices)).item() == pytest.approx(want, rel=1e-6)
        assert model.of_choices(choices) == pytest.approx(want, rel=1e-6)
        alphas = [1e4 * p for p in onehot(choices)]  # softmax of a one-hot-dominated α
        assert model.expected(alphas).item() == pytest.approx(want, rel=1e-5)
        assert model.predict(model.deployment_arch(parse_nb201(arch_str))) == want
    assert model.bounds()[1] == pytest.approx(float(pred.predict(ALL_CONV3)), rel=1e-6)


def test_missing_op_is_one_line_naming_it():
    lat = nb201_flops_latencies()
    key = next(k for k in lat if "nor_conv_1x1" in k)
    lut = LUTPredictor.from_latencies({k: v for k, v in lat.items() if k != key}, resolution=None, width_mult=None,
                                      n_classes=None)
    with pytest.raises(Exception, match=key) as e:
        NB201LatencyModel(lut)
    assert "\n" not in str(e.value)


def test_every_cell_follows_its_edges_one_choice():
    net = NB201Supernet(1, 10)
    cells = [c for c in net.cells if hasattr(c, "layers")]
    assert len(cells) == 15 and len(net.arch_parameters()) == 6
    assert all(cell.layers[e].path is net.edges[e] for cell in cells for e in range(6))
    assert [k for k in net.state_dict() if k.endswith("alpha")] == [f"edges.{e}.alpha" for e in range(6)]
    net.sample(torch.Generator().manual_seed(0))
    active = {e: net.edges[e].active for e in range(6)}
    assert all(cell.layers[e].path.active == active[e] for cell in cells for e in range(6))


def test_gradient_search_writes_an_official_arch(searched, predictor):
    arch = check_arch_file(searched / "arch.json", predictor)
    summary = json.loads((searched / "summary.json").read_text())
    assert summary["space"] == "nasbench201" and summary["arch"] == arch
    assert summary["predicted_ms"] == pytest.approx(float(predictor.predict(arch)))
    rows = list(csv.DictReader(open(searched / "log.csv")))
    assert [r["phase"] for r in rows] == ["warmup", "search"] and rows[-1]["arch_steps"] == "3"
    assert float(rows[-1]["derived_latency_ms"]) == pytest.approx(summary["predicted_ms"], rel=1e-4)
    assert not (searched / "net.config").exists()


def test_reinforce_search_writes_an_official_arch(lut_file, predictor, tmp_path):
    assert search_main(["--predictor", str(lut_file), "--out", str(tmp_path), "--epochs", "1", "--warmup-epochs", "0",
                        "--train-batches", "2", "--mode", "reinforce", "--target-latency", "1.5", "--rl-samples", "3",
                        "--space", "nasbench201"] + TINY) == 0
    arch = check_arch_file(tmp_path / "arch.json", predictor)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert rows[-1]["arch_steps"] == "2" and float(rows[-1]["reward"]) >= 0 and rows[-1]["baseline"] != ""
    assert json.loads((tmp_path / "summary.json").read_text())["predicted_ms"] == pytest.approx(
        float(predictor.predict(arch)))


def test_strong_latency_weight_moves_alpha_to_cheap_ops(predictor, data):
    def search(lam: float) -> ProxylessSearch:
        config = SearchConfig(epochs=1, warmup_epochs=0, train_batches=6, val_batches=1, batch_size=8,
                              resolution=RES, arch_every=1, arch_lr=0.1, binarize="full_v2", latency_loss="paper",
                              lambda2=lam)
        return ProxylessSearch(config, predictor, data)

    s = search(10.0)
    conv3, skip = NB201_OPS.index("nor_conv_3x3"), NB201_OPS.index("skip_connect")
    before = [float(p[conv3]) for p in s.net.probs()]
    s.run()  # 6 architecture steps
    after = [float(p[conv3]) for p in s.net.probs()]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    derived = s.derived_arch()
    assert float(predictor.predict(derived)) < float(predictor.predict(ALL_CONV3))
    assert s.net.argmax() == [skip] * 6, derived  # the identity costs 0 ms: the fastest cell
    assert s.latency.predict(derived) == pytest.approx(s.derived_latency(), rel=1e-5)
    assert s.derived_latency() == pytest.approx(s.latency.bounds()[0], rel=1e-6)
    control = search(0.0)  # the same search without the latency term ends elsewhere
    control.run()
    assert control.derived_latency() > 2 * s.derived_latency()


def test_resume_continues_bit_for_bit(lut_file, predictor, data, tmp_path):
    common = ["--predictor", str(lut_file), "--warmup-epochs", "1", "--train-batches", "2", "--epochs", "2"] + TINY
    assert search_main(common + ["--out", str(tmp_path / "full")]) == 0
    # the same search stopped after its first epoch (checkpoint written), then resumed by the command line
    config = SearchConfig(epochs=2, warmup_epochs=1, train_batches=2, val_batches=1, batch_size=8, resolution=RES,
                          arch_every=1, arch_lr=0.05)
    ProxylessSearch(config, predictor, data, tmp_path / "split").train_epoch()
    assert search_main(common + ["--out", str(tmp_path / "split"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "split"))
    assert a["space"] == "nasbench201" and a["epoch"] == b["epoch"] == 2
    for k, v in a["net"].items():
        assert torch.equal(v, b["net"][k]), k

    def rows(d):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(tmp_path / d / "log.csv"))]

    assert rows("full") == rows("split")
    assert (tmp_path / "full" / "arch.json").read_text() == (tmp_path / "split" / "arch.json").read_text()


@pytest.mark.parametrize("init", ["scratch", "supernet"])
def test_retrain_the_found_cell(searched, tmp_path, init):
    out = tmp_path / init
    assert train_main(["--arch", str(searched / "arch.json"), "--init", init, "--out", str(out), "--epochs", "1",
                       "--train-batches", "2", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
                       "--resolution", str(RES)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == json.loads((searched / "arch.json").read_text()) and summary["epochs"] == 1
    assert summary["params"] > 0 and 0 <= summary["test_acc"] <= 1 and (out / "checkpoint.pt").exists()


def test_supernet_init_is_the_path_of_the_supernet():
    torch.manual_seed(0)
    sn = NB201Supernet(1, 10)
    arch = sn.derived_arch()
    net = nb201_net(arch, 1, 10, sn.state_dict())
    sn.set_argmax()
    x = torch.randn(2, 1, RES, RES)
    assert torch.allclose(sn.eval()(x), net.eval()(x), atol=1e-6)


def test_bad_input_is_one_line(lut_file, searched, tmp_path, capsys):
    def fails(main, argv, match):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and match in err, err

    base = ["--predictor", str(lut_file), "--out", str(tmp_path / "x"), "--epochs", "1"] + TINY
    fails(search_main, base + ["--space", "proxylessnas"], "is for the nasbench201 space")
    fails(search_main, base + ["--measure"], "--measure measures ProxylessNAS nets only")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"space": "nasbench201", "arch_str": "|nor_conv_5x5~0|+|none~0|none~1|+|"}))
    fails(train_main, ["--arch", str(bad)], "bad.json")
    bad.write_text(json.dumps({"space": "nasbench201", "arch_str": ALL_CONV3, "arch_index": 1}))
    fails(train_main, ["--arch", str(bad)], "is not that of")
    train = ["--epochs", "1", "--train-batches", "1", "--resolution", str(RES), "--init", "supernet"]
    # a ProxylessNAS arch with a NAS-Bench-201 search's checkpoint, and the other way round
    proxyless = tmp_path / "proxyless" / "arch.json"
    space = Space(224, 0.35)
    space.arch([layer.candidates[0] for layer in space.layers]).save(proxyless)
    fails(train_main, ["--arch", str(proxyless), "--supernet", str(searched / "checkpoint.pt")] + train,
          "is a nasbench201 search, the arch is a proxylessnas one")
    old = tmp_path / "old.pt"  # a search checkpoint without "space": ProxylessNAS
    torch.save({"format": "latbench-search-checkpoint-1", "net": {}, "config": {"resolution": RES}}, old)
    fails(train_main, ["--arch", str(searched / "arch.json"), "--supernet", str(old)] + train,
          "is a proxylessnas search, the arch is a nasbench201 one")
    fails(train_main, ["--arch", str(searched / "arch.json"), "--dropout", "0.1"], "no dropout")


def test_proxyless_predictor_cannot_resume_a_nb201_search(searched, tmp_path, capsys):
    from search.latency import flops_latencies

    lut = tmp_path / "lut.pkl"
    save_predictor(LUTPredictor.from_latencies(flops_latencies(Space(224, 0.35)), resolution=224, width_mult=0.35,
                                               n_classes=1000), lut)
    shutil.copy(searched / "checkpoint.pt", tmp_path / "checkpoint.pt")
    assert search_main(["--predictor", str(lut), "--out", str(tmp_path), "--epochs", "3", "--resume",
                        "--warmup-epochs", "1"] + TINY) == 2
    err = capsys.readouterr().err.strip()
    assert "is a nasbench201 search, this one searches proxylessnas" in err and "\n" not in err
