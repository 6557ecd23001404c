"""The deadline, lane, memory and connection options: the CLI flags reach ServeOptions, and bad values are refused
with a usage error or an InputError naming the option (no KServe import: see test_cli.py; the request's timeout
parameter, seconds over v1 and microseconds over v2, is tested through a real server in test_deadlines.py)."""

from __future__ import annotations

import pytest

from fusioncam.cli.main import build_parser
from fusioncam.errors import InputError
from fusioncam.serve.options import ServeOptions


def test_the_flags_reach_the_options():
    args = build_parser().parse_args(["serve", "a.bundle", "--timeout-s", "2.5", "--gradient-workers", "0",
                                      "--decode-budget-mib", "256", "--header-timeout-s", "3", "--body-timeout-s", "4",
                                      "--max-connections", "9"])
    assert (args.timeout_s, args.gradient_workers, args.decode_budget_mib) == (2.5, 0, 256)
    assert (args.header_timeout_s, args.body_timeout_s, args.max_connections) == (3.0, 4.0, 9)
    defaults = build_parser().parse_args(["serve", "a.bundle"])
    assert (defaults.timeout_s, defaults.gradient_workers, defaults.max_connections) == (300.0, 1, 512)


@pytest.mark.parametrize("flag, value", [("--timeout-s", "0"), ("--timeout-s", "soon"), ("--gradient-workers", "-1"),
                                         ("--header-timeout-s", "-3"), ("--max-connections", "0"),
                                         ("--decode-budget-mib", "0")])
def test_bad_values_are_usage_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["serve", "a.bundle", flag, value])
    assert stopped.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("options, name", [({"timeout_s": 0}, "timeout_s"), ({"gradient_workers": -1}, "gradient_workers"),
                                           ({"body_timeout_s": True}, "body_timeout_s"),
                                           ({"max_connections": 0}, "max_connections")])
def test_bad_options_name_themselves(options, name):
    with pytest.raises(InputError, match=name):
        ServeOptions(**options)
