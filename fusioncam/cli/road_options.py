"""The ROAD options `fusioncam evaluate` and `fusioncam explain-dataset` share: --road and --road-percentiles."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..metrics.road import ROAD_PERCENTILES, checked_percentiles


def road_percentile_list(text: str) -> tuple[int, ...]:
    """--road-percentiles: comma-separated ints strictly between 0 and 100, e.g. 10,20,30."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"no percentile in {text!r}; e.g. {','.join(map(str, ROAD_PERCENTILES))}")
    values = []
    for part in parts:
        if not part.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} in {text!r} is not an int percentile; give ints between "
                                             f"1 and 99, e.g. {','.join(map(str, ROAD_PERCENTILES))}")
        values.append(int(part))
    try:
        return checked_percentiles(values)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_road_options(parser: argparse.ArgumentParser, needs: str = "") -> None:
    """Register --road and --road-percentiles on a subcommand; `needs` names an option --road requires."""
    after = f" (with {needs})" if needs else ""
    parser.add_argument("--road", action="store_true",
                        help=f"also measure ROAD (RemOve And Debias: MoRF, LeRF, combined){after}, as pytorch-grad-cam "
                             "computes it; costs 2 scorer rows and 2 sparse solves per image, method and percentile")
    parser.add_argument("--road-percentiles", type=road_percentile_list, metavar="P,P,...",
                        help=f"ROAD's percentiles (default: {','.join(map(str, ROAD_PERCENTILES))}); needs --road")


def road_setting(args: argparse.Namespace, needs: str | None = None, given: bool = True) -> tuple[int, ...] | None:
    """The ROAD percentiles the options ask for (None: ROAD off), or an InputError for --road-percentiles without
    --road, or --road without `needs` (an option, `given` telling whether it was given)."""
    if args.road_percentiles is not None and not args.road:
        raise InputError("--road-percentiles sets ROAD's percentiles; add --road to measure ROAD")
    if not args.road:
        return None
    if needs is not None and not given:
        raise InputError(f"--road is a faithfulness metric measured with {needs}; add {needs} or leave --road off")
    return args.road_percentiles if args.road_percentiles is not None else ROAD_PERCENTILES
