"""ProxylessNAS search: path binarization, binary-gate gradient, latency term, REINFORCE, λ2, resume, CLI.

Small and fast: width 0.35, 16×16 Fashion-MNIST images, batches of 8; the latencies are a LUT of
FLOP-derived op latencies at the 224 deployment resolution (real ``predictors.LUTPredictor``).
"""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from latbench.errors import ConfigError, LatbenchError
from latbench.space import ZERO, Arch, Space
from predictors import LUTPredictor, save_predictor
from search.data import load_fashion_mnist
from search.latency import LatencyModel, flops_latencies
from search.losses import latency_loss, mul_log_unit
from search.run import main
from search.supernet import Supernet
from search.trainer import ProxylessSearch, SearchConfig, reinforce_update

WIDTH = 0.35
RES = 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions: one thread is faster than two fighting over a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def latencies() -> dict[str, float]:
    return flops_latencies(Space(224, WIDTH))


@pytest.fixture(scope="module")
def predictor(latencies):
    return LUTPredictor.from_latencies(latencies, resolution=224, width_mult=WIDTH, n_classes=1000)


@pytest.fixture(scope="module")
def lut_file(predictor, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "lut.pkl"
    save_predictor(predictor, path)
    return path


@pytest.fixture(scope="module")
def data():
    return load_fashion_mnist(RES)


def small_config(**kw) -> SearchConfig:
    base = dict(epochs=1, warmup_epochs=0, train_batches=4, val_batches=2, test_batches=2, bn_calib_batches=2,
                batch_size=8, arch_every=1, arch_lr=0.05, resolution=RES, seed=0)
    base.update(kw)
    return SearchConfig(**base)


def count_calls(net: Supernet) -> tuple[dict[tuple[int, int], int], list]:
    """Forward calls of every module inside every candidate, keyed by (layer, candidate)."""
    calls: dict[tuple[int, int], int] = {}
    handles = []
    for li, m in enumerate(net.layers):
        for ci, op in enumerate(m.ops):
            for sub in op.modules():
                def hook(mod, inp, out, key=(li, ci)):
                    calls[key] = calls.get(key, 0) + 1
                handles.append(sub.register_forward_hook(hook))
    return calls, handles


def test_weight_step_runs_only_the_sampled_path(predictor, data):
    s = ProxylessSearch(small_config(), predictor, data)
    calls, handles = count_calls(s.net)
    x, y = next(data.train.batches(8, seed=1))
    s.weight_step(x, y)
    for h in handles:
        h.remove()
    # Exactly one candidate per layer ran, the sampled one; no other candidate's module was called,
    # so none of their activations were ever built.
    ran = sorted({k for k in calls})
    assert [li for li, _ in ran] == list(range(len(s.net.layers)))
    assert all(ci == s.net.layers[li].active for li, ci in ran)
    # Only the sampled path's weights got gradients (the others stay None, so SGD skips them).
    for m in s.net.layers:
        for ci, op in enumerate(m.ops):
            grads = [p.grad for p in op.parameters()]
            if ci == m.active:
                assert all(g is not None for g in grads)
            else:
                assert all(g is None for g in grads)
        assert m.alpha.grad is None


def test_two_path_step_gives_the_binary_gate_gradient(predictor, data):
    """α's gradient equals Σ_j ∂L/∂g_j · p_j(δ_ij − p_i) over the two sampled paths, computed here
    independently from the gate gradients ∂L/∂g_j = <∂L/∂y, y_j>; unsampled α get none."""
    torch.manual_seed(0)
    space = Space(RES, WIDTH, 10, 1)
    net = Supernet(space, align_init=False).train()  # aligned, the two paths would compute the same
    for m in net.layers:
        with torch.no_grad():
            m.alpha.normal_()
    gen = torch.Generator().manual_seed(3)
    net.sample(gen)
    L = next(i for i, m in enumerate(net.layers) if m.alpha.numel() == 7)  # a layer with zero
    m = net.layers[L]
    a, b = 6, 2  # zero active, 5x5_MBConv3 the other sampled path
    assert m.candidates[a] == ZERO
    m.involved, m.active = (a, b), a
    x, y = next(load_fashion_mnist(RES).valid.batches(8, seed=0))
    net.eval()  # fixed BN statistics so both computations see identical functions
    F.cross_entropy(net(x), y).backward()
    got = m.alpha.grad.clone()

    with torch.no_grad():
        h = net.stem(x)
        for layer in net.layers[:L]:
            h = layer(h)
        ys = [m.ops[a](h), m.ops[b](h)]
    z = ys[0].clone().requires_grad_(True)
    out = z
    for layer in net.layers[L + 1:]:
        out = layer(out)
    F.cross_entropy(net.classifier(net.feature_mix(out)), y).backward()
    dg = [float((z.grad * yj).sum()) for yj in ys]
    p = torch.softmax(m.alpha.detach()[[a, b]], 0)
    want = torch.zeros_like(got)
    for i, ii in enumerate((a, b)):
        want[ii] = sum(dg[j] * p[j] * (float(i == j) - p[i]) for j in range(2))
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got, want)
    assert got[[i for i in range(7) if i not in (a, b)]].abs().sum() == 0
    assert got.abs().sum() > 0


def test_rescale_keeps_unsampled_probabilities(predictor, data):
    # independent init: aligned candidates compute one function at first, so CE alone would not move α
    s = ProxylessSearch(small_config(latency_loss="none", align_init=False), predictor, data)
    for m in s.net.layers:
        with torch.no_grad():
            m.alpha.normal_()
    before = [m.probs.detach().clone() for m in s.net.layers]
    x, y = next(data.valid.batches(8, seed=0))
    s.gen.manual_seed(5)
    s.net.sample_two(s.gen)
    involved = [m.involved for m in s.net.layers]
    s.gen.manual_seed(5)  # arch_step samples the same pairs again
    s.arch_step_gradient(x, y)
    moved = 0
    for m, p0, inv in zip(s.net.layers, before, involved):
        p1 = m.probs.detach()
        others = [i for i in range(len(p0)) if i not in inv]
        assert torch.allclose(p1[others], p0[others], atol=1e-6)
        assert torch.allclose(p1[list(inv)].sum(), p0[list(inv)].sum(), atol=1e-6)
        moved += int(not torch.allclose(p1, p0))
    assert moved > len(s.net.layers) // 2


def test_latency_gradient_reaches_alpha_and_lowers_expected_latency(predictor, data):
    s = ProxylessSearch(small_config(latency_loss="paper", lambda2=1.0), predictor, data)
    e0 = s.expected_latency()
    e0.backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in s.net.arch_parameters())
    # The gradient points at the slower candidates: descending it favours the faster ones.
    for a, lat in zip(s.net.arch_parameters(), s.latency.tables):
        assert int(torch.argmin(a.grad)) == int(torch.argmin(lat))
    x, y = next(data.valid.batches(8, seed=0))
    values = [e0.item()]
    for _ in range(5):
        s.arch_step_gradient(x, y)
        values.append(s.expected_latency().item())
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.985 * values[0]  # (two mode: each step moves only the sampled pairs)


def test_loss_forms_match_their_formulas():
    ce, e = torch.tensor(2.0), torch.tensor(50.0)
    assert float(latency_loss(ce, e, "paper", 0.01)) == pytest.approx(2.5)
    assert float(latency_loss(ce, e, "add#linear", 0.1, 40.0)) == pytest.approx(2.0 + 0.1 * 10 / 40)
    assert float(latency_loss(ce, e, "mul#log", None, 40.0)) == pytest.approx(
        0.2 * 2.0 * (torch.log(e).item() / torch.log(torch.tensor(40.0)).item()) ** 0.3)
    assert float(latency_loss(ce, torch.tensor(30.0), "add#abs", 0.5, 40.0)) == pytest.approx(2.0 + 0.5 * 0.25)
    with pytest.raises(ConfigError, match="target-latency"):
        latency_loss(ce, e, "mul#log")


def test_reinforce_moves_alpha_toward_higher_reward_paths():
    net = Supernet(Space(RES, WIDTH, 10, 1))
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1, betas=(0.0, 0.999))
    gen = torch.Generator().manual_seed(0)
    good = {0: 2, 5: 4, 21: 1}  # layer -> the candidate that earns reward

    def reward(choices):
        return 0.1 + sum(choices[layer] == c for layer, c in good.items())

    baseline = None
    p0 = {layer: net.layers[layer].probs[c].item() for layer, c in good.items()}
    for _ in range(40):
        baseline, _, _ = reinforce_update(net, reward, opt, 10, gen, baseline, decay=0.9)
    for layer, c in good.items():
        p = net.layers[layer].probs.detach()
        assert float(p[c]) > 0.6 > p0[layer], (layer, p)
        assert int(torch.argmax(p)) == c


def test_larger_lambda_gives_a_faster_derived_architecture(predictor, data):
    lats = []
    for lam in (0.0, 1.0):
        s = ProxylessSearch(small_config(latency_loss="paper", lambda2=lam, train_batches=6, val_batches=1),
                            predictor, data)
        s.run()
        lats.append(s.latency.predict(s.derived_arch()))
    lo, hi = s.latency.bounds()
    assert lats[1] < lats[0], lats
    assert lats[1] < lo + 0.25 * (hi - lo) < lats[0], (lats, lo, hi)


def test_reinforce_mode_trains_and_logs_reward(predictor, data):
    s = ProxylessSearch(small_config(mode="reinforce", target_latency=3.0, rl_samples=3, train_batches=2),
                        predictor, data)
    row = s.train_epoch()
    assert row["arch_steps"] == 2 and 0 <= row["reward"] <= 1.5 and row["baseline"] != ""


def test_missing_latency_names_the_op(latencies, data):
    key = next(k for k in sorted(latencies) if "kernel:7" in k and "expand:6" in k)
    partial = {k: v for k, v in latencies.items() if k != key}
    pred = LUTPredictor.from_latencies(partial, resolution=224, width_mult=WIDTH, n_classes=1000)
    with pytest.raises(LatbenchError, match=re.escape(key)):
        LatencyModel(pred, Space(RES, WIDTH, 10, 1))


def test_cli_resume_continues_where_it_stopped_and_arch_loads_back(lut_file, predictor, data, tmp_path):
    common = ["--predictor", str(lut_file), "--train-batches", "3", "--val-batches", "1", "--test-batches", "1",
              "--batch-size", "8", "--resolution", str(RES), "--arch-every", "1", "--arch-lr", "0.05",
              "--warmup-epochs", "1"]
    assert main(common + ["--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    # The same search killed after two epochs (its checkpoint written), then resumed by the CLI.
    cfg = small_config(epochs=3, warmup_epochs=1, train_batches=3, val_batches=1, bn_calib_batches=10)
    killed = ProxylessSearch(cfg, predictor, data, tmp_path / "part")
    killed.train_epoch()
    killed.train_epoch()
    assert main(common + ["--epochs", "3", "--out", str(tmp_path / "part"), "--resume"]) == 0

    def rows(d):
        with open(d / "log.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    full, part = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert [r["epoch"] for r in part] == ["1", "2", "3"]
    assert [r["phase"] for r in part] == ["warmup", "search", "search"]
    assert full == part
    a_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["net"]
    a_part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["net"]
    assert all(torch.equal(a_full[k], a_part[k]) for k in a_full)

    arch = Arch.load(tmp_path / "part" / "arch.json")
    assert (arch.resolution, arch.width_mult, arch.n_classes) == (224, WIDTH, 1000)
    assert arch == Arch.load(tmp_path / "full" / "arch.json")
    assert list(arch.ops) == part[-1]["arch"].split(",")
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["predicted_ms"] == pytest.approx(float(predictor.predict(arch)))
    assert 0.0 <= summary["test_acc"] <= 1.0


def test_cli_errors_are_one_line(lut_file, tmp_path, capsys):
    assert main(["--predictor", str(lut_file), "--mode", "reinforce", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--target-latency" in err and "\n" not in err
    assert main(["--predictor", str(tmp_path / "nope.pkl"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--predictor", str(lut_file), "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_latbench_search_subcommand(lut_file, tmp_path, capsys):
    from latbench.cli import main as latbench_main

    assert latbench_main(["search", "--predictor", str(lut_file), "--out", str(tmp_path), "--epochs", "1",
                          "--train-batches", "1", "--val-batches", "1", "--test-batches", "1", "--batch-size", "8",
                          "--resolution", str(RES), "--latency-loss", "mul#log", "--target-latency", "2.0"]) == 0
    assert "arch.json: predicted" in capsys.readouterr().out
    assert Arch.load(tmp_path / "arch.json").resolution == 224
    assert latbench_main(["search", "--predictor", str(lut_file), "--latency-loss", "add#linear",
                          "--out", str(tmp_path)]) == 2
    assert "needs --target-latency" in capsys.readouterr().err


def test_image_folder_data(tmp_path):
    from PIL import Image

    from search.data import load_dataset

    rng = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            arr = (torch.rand(20, 30, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(tmp_path, 16)
    assert (ds.n_classes, ds.in_channels, len(ds.train) + len(ds.valid)) == (2, 3, 12)
    x, y = next(ds.train.batches(4, seed=0))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="one sub-directory per class"):
        load_dataset(tmp_path / "cat", 16)


def test_low_temperature_latency_follows_the_argmax_net(predictor):
    space = Space(RES, WIDTH, 10, 1)
    model = LatencyModel(predictor, space)
    torch.manual_seed(1)
    alphas = [torch.randn(len(layer.candidates)) for layer in space.layers]
    argmax_ms = model.of_choices([int(a.argmax()) for a in alphas])
    assert float(model.expected(alphas, 0.01)) == pytest.approx(argmax_ms, rel=1e-3)
    assert float(model.expected(alphas, 1.0)) == pytest.approx(
        model.fixed + sum(float((torch.softmax(a, 0) * t).sum()) for a, t in zip(alphas, model.tables)))
    with pytest.raises(ConfigError, match="temperature"):
        SearchConfig(latency_temperature=0.0)


def test_short_supernet_training_learns(predictor):
    """A few dozen weight steps on sampled paths bring the loss well below ln 10 (a uniform guess) and
    the derived path above chance. (Independently initialised candidates stayed at loss 2.7–2.9.)"""
    data28 = load_fashion_mnist(28)
    s = ProxylessSearch(SearchConfig(epochs=1, warmup_epochs=1, train_batches=60, val_batches=4, bn_calib_batches=4,
                                     batch_size=64, resolution=28, seed=0), predictor, data28)
    losses = []
    for x, y in data28.train.batches(64, seed=0, limit=60):
        losses.append(s.weight_step(x, y)[0])
    assert sum(losses[-15:]) / 15 < 0.85 * math.log(10), losses
    assert s.evaluate(data28.valid, 4) > 0.3


def test_two_mode_latency_step_touches_only_the_sampled_pairs(predictor, data):
    """With a latency loss on, a 'two' step gives no gradient to unsampled α (E[LAT] is over the pair
    only, as the official current_prob_over_ops), so they and their probabilities stay put."""
    s = ProxylessSearch(small_config(latency_loss="paper", lambda2=1.0, binarize="two"), predictor, data)
    for m in s.net.layers:
        with torch.no_grad():
            m.alpha.normal_()
    alpha0 = [m.alpha.detach().clone() for m in s.net.layers]
    before = [m.probs.detach().clone() for m in s.net.layers]
    x, y = next(data.valid.batches(8, seed=0))
    s.gen.manual_seed(5)
    s.net.sample_two(s.gen)
    involved = [m.involved for m in s.net.layers]
    s.net.end_arch_step()
    s.gen.manual_seed(5)
    s.arch_step_gradient(x, y)
    for m, a0, p0, inv in zip(s.net.layers, alpha0, before, involved):
        others = [i for i in range(len(p0)) if i not in inv]
        assert torch.equal(m.alpha.detach()[others], a0[others])
        assert torch.allclose(m.probs.detach()[others], p0[others], atol=1e-6)
        assert not torch.allclose(m.alpha.detach()[list(inv)], a0[list(inv)])


def test_mul_log_is_finite_with_a_sub_millisecond_table(data):
    fast = {k: v / 2000 for k, v in flops_latencies(Space(224, WIDTH)).items()}
    pred = LUTPredictor.from_latencies(fast, resolution=224, width_mult=WIDTH, n_classes=1000)
    lo, hi = LatencyModel(pred).bounds()
    assert hi < 1.0  # the whole space is sub-millisecond
    for target in (0.5 * (lo + hi), 3.0):
        s = ProxylessSearch(small_config(latency_loss="mul#log", target_latency=target), pred, data)
        x, y = next(data.valid.batches(8, seed=0))
        for _ in range(3):
            assert math.isfinite(s.arch_step_gradient(x, y))
        assert all(torch.isfinite(a).all() for a in s.net.arch_parameters())
    assert mul_log_unit(50.0, 80.0) == 1.0  # the official formula wherever it is defined
    ce, e = torch.tensor(2.0), torch.tensor(0.3)
    assert math.isfinite(float(latency_loss(ce, e, "mul#log", None, 0.4, mul_unit=mul_log_unit(0.2, 0.4))))


def test_full_v2_gives_every_candidates_gate_gradient(predictor, data):
    """full_v2: the output is the active path's; α's gradient is Σ_j ∂L/∂g_j p_j(δ_ij − p_i) over every
    candidate with the full softmax, ∂L/∂g_j = <∂L/∂y, op_j(x)>, computed here independently."""
    torch.manual_seed(0)
    net = Supernet(Space(RES, WIDTH, 10, 1), align_init=False)
    for m in net.layers:
        with torch.no_grad():
            m.alpha.normal_()
        m.sample(torch.Generator().manual_seed(m.index))
    net.eval()
    for p in net.weight_parameters():
        p.requires_grad_(False)
    L = next(i for i, m in enumerate(net.layers) if m.alpha.numel() == 7)
    m = net.layers[L]
    x, y = next(data.valid.batches(8, seed=0))
    with torch.no_grad():
        ref = net(x)
    m.full_v2 = True
    out = net(x)
    assert torch.allclose(out, ref)
    F.cross_entropy(out, y).backward()
    got = m.alpha.grad.clone()
    with torch.no_grad():
        h = net.stem(x)
        for layer in net.layers[:L]:
            h = layer(h)
        ys = [op(h) for op in m.ops]
    z = ys[m.active].clone().requires_grad_(True)
    o = z
    for layer in net.layers[L + 1:]:
        o = layer(o)
    F.cross_entropy(net.classifier(net.feature_mix(o)), y).backward()
    g = torch.tensor([float((z.grad * yj).sum()) for yj in ys])
    p = torch.softmax(m.alpha.detach(), 0)
    want = torch.tensor([sum(g[j] * p[j] * (float(i == j) - p[i]) for j in range(7)) for i in range(7)])
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got, want)
    assert (got != 0).all()


def test_full_v2_search_step_moves_alpha_toward_faster_ops(predictor, data):
    s = ProxylessSearch(small_config(latency_loss="paper", lambda2=1.0, binarize="full_v2"), predictor, data)
    e0 = s.expected_latency().item()
    x, y = next(data.valid.batches(8, seed=0))
    for _ in range(4):
        s.arch_step_gradient(x, y)
    assert s.expected_latency().item() < 0.98 * e0
    assert all(not m.full_v2 and not m.involved for m in s.net.layers)


def test_reinforce_baseline_official_and_ema():
    net = Supernet(Space(RES, WIDTH, 10, 1))
    opt = torch.optim.SGD(net.arch_parameters(), lr=0.0)
    rewards = iter([1.0, 3.0, 2.0, 4.0])

    def reward(choices):
        return next(rewards)

    b, mean, _ = reinforce_update(net, reward, opt, 2, None, None, decay=0.99, kind="official")
    assert (b, mean) == (2.0, 2.0)
    b, mean, _ = reinforce_update(net, reward, opt, 2, None, b, decay=0.99, kind="official")
    assert b == pytest.approx(2.0 + 0.99 * (3.0 - 2.0))  # official: b += decay·(R̄ − b), then R − b
    rewards = iter([1.0, 3.0, 2.0, 4.0])
    b, _, _ = reinforce_update(net, reward, opt, 2, None, None, decay=0.99, kind="ema")
    b, _, _ = reinforce_update(net, reward, opt, 2, None, b, decay=0.99, kind="ema")
    assert b == pytest.approx(0.99 * 2.0 + 0.01 * 3.0)


def test_alpha_starts_as_official_small_normal():
    net = Supernet(Space(RES, WIDTH, 10, 1))
    a = torch.cat([p.detach() for p in net.arch_parameters()])
    assert 3e-4 < float(a.std()) < 3e-3 and (a != 0).all()
    assert len(set(net.argmax())) > 1  # not every untouched layer's argmax is candidate 0
