"""``latbench measure --space NAME``: whole networks of another registered space (not a command itself;
:mod:`latbench.cli.measure` dispatches here so its own code stays the ProxylessNAS path)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latbench.artifacts import ArtifactCache
from latbench.backends.base import get_backend
from latbench.campaign import Campaign, Job
from latbench.devices import Device
from latbench.errors import LatbenchError
from latbench.rounds import Plan
from latbench.spaces import check_skeleton_args, get_space
from latbench.tables import error_kinds, ok_rows


def run_space(args: argparse.Namespace, device: Device, plan: Plan) -> int:
    """Measure ``--archs N`` seeded random whole networks (and ``--space-arch SPEC`` ones) of ``--space``, and
    (unless ``--no-ops``) their distinct ops in the same interleaved rounds, as ``--archs`` does for ProxylessNAS:
    networks go to the archs table, ops to the op table (what ``fit-predictor --space NAME`` fits on)."""
    space = get_space(args.space)
    check_skeleton_args(space, args.resolution, args.width_mult, args.n_classes)
    if args.artifacts or args.op or args.sample:
        raise LatbenchError(f"--space {space.name} measures whole networks: use --archs N [--seed S] "
                            "(--op, --sample and --artifacts are for the ProxylessNAS space)")
    archs = [space.resolve(s) for s in (getattr(args, "space_arch", None) or [])]
    if args.archs:
        archs += space.sample(args.archs, args.seed)
    if not archs:
        raise LatbenchError(f"--space {space.name}: name what to measure with --archs N (seeded random networks, "
                            "--seed S) or --space-arch STRING|INDEX")
    jobs = list({j.key: j for j in (Job.network(a) for a in archs)}.values())
    if getattr(args, "with_ops", True):  # the networks' ops in the same rounds, into the op table (--no-ops: not)
        jobs += [Job.space_op(key) for key in dict.fromkeys(k for a in archs for k in space.arch_ops(a))]
    campaign = Campaign(device, get_backend(args.backend), Path(args.out), ArtifactCache(args.cache),
                        workers=args.workers, progress=True, plan=plan)
    try:
        df = campaign.run(jobs, args.limit)
    except KeyboardInterrupt:
        print(f"latbench: interrupted; finished rows are in {campaign.store('archs').path} — rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    if campaign.summary:
        print(f"campaign: {campaign.summary_line()}", file=sys.stderr)
    keys = {j.key for j in jobs if j.what == "archs"}
    df = df[df["key"].isin(keys)] if "key" in df else df
    if df.empty or "status" not in df:
        print(f"latbench: nothing was measured on {device.name}", file=sys.stderr)
        return 1
    good = ok_rows(df)
    n_err = len(df) - len(good)
    print(f"{len(good)} {space.name} networks measured on {device.name} ({n_err} errors) → "
          f"{campaign.store('archs').path}")
    for _, r in df[df["status"] != "ok"].head(5).iterrows():
        print(f"  error {r['key']}: {r.get('error')}", file=sys.stderr)
    if n_err:
        print(f"errors by kind: {error_kinds(df)}", file=sys.stderr)
    return 0 if len(good) else 1
