"""``vidpar generate --cache ...``: the step-cache options and the policy they describe (checked before any work)."""

from __future__ import annotations

import argparse

from .common import UsageError

OPTIONS = ("cache_threshold", "cache_warmup", "cache_max_skips", "cache_final_steps", "cache_probe_blocks",
           "cache_interval")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    from vidpar.cache import POLICIES

    group = parser.add_argument_group("step caching (skip the DiT on steps where its output barely changes; the "
                                      "same skipped steps and video on every GPU count)")
    group.add_argument("--cache", choices=tuple(POLICIES), default=None,
                       help="policy: fbcache (first-block residual), teacache (timestep-embedding estimator), "
                            "magcache (calibrated magnitude ratios), taylorseer (Taylor forecast every N steps)")
    group.add_argument("--cache-threshold", type=float, default=None, metavar="X",
                       help="fbcache/teacache/magcache threshold (default: the model's published value, else the "
                            "policy's published default)")
    group.add_argument("--cache-warmup", type=int, default=None, metavar="N", help="first N steps always computed")
    group.add_argument("--cache-max-skips", type=int, default=None, metavar="N",
                       help="at most N consecutive skipped steps")
    group.add_argument("--cache-final-steps", type=int, default=None, metavar="N",
                       help="last N steps always computed (default 1)")
    group.add_argument("--cache-probe-blocks", type=int, default=None, metavar="N",
                       help="fbcache: blocks run on every step to decide (default 1)")
    group.add_argument("--cache-interval", type=int, default=None, metavar="N",
                       help="taylorseer: the blocks run every N steps (default 5)")


def cache_policy(args: argparse.Namespace):
    """The policy ``args`` describe, or None; ``UsageError`` for options without ``--cache`` or that the policy
    does not take."""
    from vidpar.cache import make_policy

    given = [o for o in OPTIONS if getattr(args, o, None) is not None]
    if args.cache is None:
        if given:
            raise UsageError(f"{', '.join('--' + o.replace('_', '-') for o in given)} need --cache POLICY")
        return None
    try:
        return make_policy(
            args.cache, args.cache_threshold, warmup_steps=args.cache_warmup, max_skips=args.cache_max_skips,
            final_steps=1 if args.cache_final_steps is None else args.cache_final_steps,
            probe_blocks=args.cache_probe_blocks, interval=args.cache_interval,
        )
    except ValueError as e:
        raise UsageError(f"--cache {args.cache}: {e}") from None


__all__ = ["add_cache_arguments", "cache_policy"]
