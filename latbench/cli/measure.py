"""``latbench measure``: profile the space's ops, or whole networks and their ops (``--arch``,
``--net-config``, ``--archs N``), or a prebuilt artifact set, on a device."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from latbench.artifacts import ArtifactCache
from latbench.backends.base import get_backend
from latbench.campaign import Campaign, Job, network_jobs, network_rows, plan_of
from latbench.cli.measure_space import run_space
from latbench.cli.ops import add_space_args, add_space_name_arg
from latbench.devices import Device, get_device
from latbench.errors import LatbenchError
from latbench.netconfig import Net, load_net_config
from latbench.offline import measure_artifacts
from latbench.ops import OpSpec
from latbench.rounds import Plan
from latbench.sampling import sample_ops
from latbench.space import Arch, Space, random_archs
from latbench.spaces import DEFAULT_SPACE, get_space
from latbench.tables import error_kinds, ok_rows, read_table

log = logging.getLogger(__name__)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", "-t", default="local-cpu",
                   help="device name (a YAML in device_configs/, see `latbench devices`) or a YAML path "
                        "(default: local-cpu, this machine through a local RPC server)")
    p.add_argument("--backend", "-b", default=None,
                   help="how ops are compiled and run (see `latbench backends`; default: the tvm default)")
    p.add_argument("--cache", default=None,
                   help="artifact cache directory (default: $LATBENCH_CACHE or ~/.cache/latbench)")
    p.add_argument("--workers", type=int, default=None, help="parallel compile workers (default: CPU count)")


def add_rounds_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rounds", "how each latency is taken on a noisy machine (defaults: the device's "
                             "timing section; see latbench.rounds)")
    g.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds: every item is visited once per round in a fresh random order "
                        "(default 5; 1 = one long pass per item, the old behaviour)")
    g.add_argument("--ci-target", type=float, default=None,
                   help="more visits while an item's 95%% CI half-width is above this fraction of it (default 0.02)")
    g.add_argument("--max-visits", type=int, default=None, help="cap on visits per item (default max(rounds, 9))")
    g.add_argument("--no-reference", dest="reference", action="store_const", const=False, default=None,
                   help="do not time the reference op between visits (no burst rejection, no normalisation)")
    g.add_argument("--no-normalize", dest="normalize", action="store_const", const=False, default=None,
                   help="keep raw visit latencies (do not normalise each by the reference timed around it)")


def plan_args(args: argparse.Namespace) -> dict:
    return {"rounds": args.rounds, "ci_target": args.ci_target, "max_visits": args.max_visits,
            "reference": args.reference, "normalize": args.normalize}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure", help="measure op latencies on a device",
        description="Compile every distinct op of the space for the device's target (cached, in parallel), "
                    "time each on the device over TVM RPC, and append one row per op to the Parquet table "
                    "OUT/<device>/ops-<backend>.parquet. With --arch, --net-config or --archs, whole networks are "
                    "measured instead, with their ops in the same interleaved rounds: the networks go to "
                    "OUT/<device>/archs-<backend>.parquet, their ops to the op table. Resumable: a rerun measures "
                    "only what is missing.")
    add_space_args(p)
    add_space_name_arg(p)
    add_device_args(p)
    p.add_argument("--out", "-o", default="data", help="table directory (default: data)")
    p.add_argument("--limit", type=int, default=None, help="measure only the first N ops")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="also measure N random MBConv configurations beyond the space (predictor training data)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample and --archs (default 0)")
    g = p.add_argument_group("whole networks", "measure networks end to end (and their ops, in the same rounds)")
    g.add_argument("--arch", action="append", default=None, metavar="FILE",
                   help="an architecture JSON of the space ({\"resolution\": 224, \"width_mult\": 1.0, \"ops\": "
                        "[...]}, e.g. a search's OUT/arch.json); repeatable")
    g.add_argument("--net-config", action="append", default=None, metavar="FILE",
                   help="an official ProxylessNAS net.config (any per-block widths, e.g. the released proxyless_cpu), "
                        "at --resolution; repeatable")
    g.add_argument("--archs", type=int, default=0, metavar="N",
                   help="N seeded random architectures of the space (--resolution/--width/--classes, --seed); "
                        "with --space nasbench201 the rows carry arch_str and arch_index")
    g.add_argument("--space-arch", action="append", default=None, metavar="SPEC",
                   help="with --space nasbench201: also measure this network (official string or index; repeatable)")
    g.add_argument("--no-ops", dest="with_ops", action="store_false",
                   help="time only the whole networks, not their ops")
    p.add_argument("--op", action="append", default=None, metavar="KEY",
                   help="measure only this op key (official format; repeatable) instead of the space")
    p.add_argument("--artifacts", default=None, metavar="DIR",
                   help="time a prebuilt artifact set (from `latbench compile --out DIR`) instead of building")
    add_rounds_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = get_device(args.target)
    plan = plan_of(device, **plan_args(args))  # bad values fail before anything is built
    if get_space(args.space).name != DEFAULT_SPACE or args.space_arch:
        return run_space(args, device, plan)  # whole networks of another registered space
    nets = networks_of(args)
    if nets:
        if args.artifacts:
            raise LatbenchError("--artifacts times a prebuilt set; drop --arch/--net-config/--archs")
        return run_networks(args, device, plan, nets)
    if args.artifacts:
        df = measure_artifacts(args.artifacts, device, args.out, progress=not args.verbose, **plan_args(args))
    else:
        backend = get_backend(args.backend)
        space = Space(resolution=args.resolution, width_mult=args.width_mult, n_classes=args.n_classes)
        if args.op:
            ops = [OpSpec.parse(k) for k in args.op]
        else:
            ops = list(space.distinct_ops())
        if args.sample:
            ops += sample_ops(args.sample, args.seed)
        jobs = [Job.op(o) for o in dict.fromkeys(ops)]
        campaign = Campaign(device, backend, Path(args.out), ArtifactCache(args.cache),
                            workers=args.workers, progress=True, plan=plan)
        try:
            df = campaign.run(jobs, args.limit)
        except KeyboardInterrupt:
            print(f"latbench: interrupted; finished rows are in {campaign.store('ops').path} and every visit "
                  f"taken in {campaign.store('ops').visits_journal.name} — rerun the same command to resume",
                  file=sys.stderr)
            return 130
        if campaign.summary:
            print(f"campaign: {campaign.summary_line()}", file=sys.stderr)
    if df.empty or "status" not in df:
        print(f"latbench: nothing was measured on {device.name}", file=sys.stderr)
        return 1
    good = ok_rows(df)
    n_err = len(df) - len(good)
    print(f"{len(good)} ops measured on {device.name} ({n_err} errors) → {args.out}/{device.name}/")
    if n_err:
        for _, r in df[df["status"] != "ok"].head(5).iterrows():
            print(f"  error {r['key']}: {r.get('error')}", file=sys.stderr)
        print(f"errors by kind: {error_kinds(df)}", file=sys.stderr)
    return 0 if len(good) else 1


def networks_of(args: argparse.Namespace) -> list[tuple[str, Arch | Net]]:
    """(label, network) of every --arch, --net-config and --archs network, in that order."""
    out: list[tuple[str, Arch | Net]] = [(f, Arch.load(f)) for f in args.arch or []]
    out += [(f, load_net_config(f, args.resolution).canonical()) for f in args.net_config or []]
    if args.archs < 0:
        raise LatbenchError(f"--archs must be >= 1, got {args.archs}")
    if args.archs:
        space = Space(resolution=args.resolution, width_mult=args.width_mult, n_classes=args.n_classes)
        out += [(a.key, a) for a in random_archs(space, args.archs, args.seed)]
    return out


def run_networks(args: argparse.Namespace, device: Device, plan: Plan, labelled: list[tuple[str, Arch | Net]]) -> int:
    """Measure whole networks (and their ops) in one campaign; print one line per network."""
    nets = [n for _, n in labelled]
    extra = [OpSpec.parse(k) for k in args.op or []]
    if args.sample:
        extra += sample_ops(args.sample, args.seed)
    jobs = network_jobs(nets, args.with_ops, extra)
    campaign = Campaign(device, get_backend(args.backend), Path(args.out), ArtifactCache(args.cache),
                        workers=args.workers, progress=True, plan=plan)
    try:
        df = campaign.run(jobs, args.limit)
    except KeyboardInterrupt:
        print(f"latbench: interrupted; finished rows are in {campaign.store('archs').path} and "
              f"{campaign.store('ops').path} — rerun the same command to resume", file=sys.stderr)
        return 130
    if campaign.summary:
        print(f"campaign: {campaign.summary_line()}", file=sys.stderr)
    rows = network_rows(df, nets).set_index("key") if len(df) else None
    n_ok = n_done = 0
    for label, net in labelled:
        if rows is None or net.key not in rows.index:
            continue  # left out by --limit
        n_done += 1
        r = rows.loc[net.key]
        if r.get("status", "ok") == "ok":
            n_ok += 1
            print(f"{float(r['median_ms']):10.4f} ms  {label}")
        else:
            print(f"  error {label}: {r.get('error')}", file=sys.stderr)
    msg = (f"{n_ok} networks measured on {device.name} ({n_done - n_ok} errors) → "
           f"{campaign.store('archs').path}")
    op_keys = {j.key for j in jobs if j.what == "ops"}
    if op_keys and campaign.store("ops").path.exists():
        ops = ok_rows(read_table(campaign.store("ops").path))
        msg += f"; {len(op_keys & set(ops['key']))} of their {len(op_keys)} ops → {campaign.store('ops').path}"
    print(msg)
    if rows is not None and n_ok < n_done:
        print(f"errors by kind: {error_kinds(rows.reset_index())}", file=sys.stderr)
    return 0 if n_done and n_ok == n_done else 1
