"""The analysis commands' options are the API's keyword arguments, declared once
(prism_analysis.cli.api_options): same names, same defaults, and each reaches the function."""

import importlib
import inspect
from dataclasses import MISSING, fields

import pytest

from prism_analysis.cli.api_options import API, CkaOptions
from prism_analysis.cli.commands import COMMANDS
from prism_analysis.cli.parser import FLAGS, build_parser, flag
from prism_analysis.options import flags, from_args


def _function(path):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("cls", list(API), ids=lambda c: c.__name__)
def test_every_option_is_a_parameter_with_the_same_default(cls):
    params = inspect.signature(_function(API[cls])).parameters
    for f in fields(cls):
        assert f.name in params, f"{cls.__name__}.{f.name} is not a parameter of {API[cls]}"
        default = f.default if f.default is not MISSING else f.default_factory()
        assert params[f.name].default == default, f"{cls.__name__}.{f.name}: {default!r} != the function's"


@pytest.mark.parametrize("cls", list(API), ids=lambda c: c.__name__)
def test_the_command_line_defaults_build_the_api_defaults(cls):
    """Parsing a command line that gives no option yields the function's defaults (threshold lists
    come back as the same numbers)."""
    command = {
        "AuditOptions": ["audit", "a", "b"],
        "CkaOptions": ["cka", "a", "b", "--probe", "p.txt"],
        "DiffOptions": ["diff", "a", "b", "--probe", "p.txt"],
        "TrajectoryOptions": ["trajectory", "run"],
        "CompareOptions": ["compare", "a", "b", "c", "d"],
    }[cls.__name__]
    args = build_parser(COMMANDS).parse_args(command)
    params = inspect.signature(_function(API[cls])).parameters
    for name, value in vars(from_args(cls, args)).items():
        assert (
            list(value) == list(params[name].default)
            if isinstance(value, (list, tuple))
            else (value == params[name].default)
        ), name


def test_options_parse_and_reach_the_config():
    line = "cka a b --probe p.txt --n-prompts 7 --measure cka,rsa --sample 3"
    args = build_parser(COMMANDS).parse_args(f"{line} --dtype bfloat16 --debiased --pool tokens".split())
    cfg = from_args(CkaOptions, args)
    assert (cfg.n, cfg.measures, cfg.sample_size, cfg.dtype, cfg.debiased, cfg.pool) == (
        7,
        ("cka", "rsa"),
        3,
        "bfloat16",
        True,
        "tokens",
    )


def test_bad_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(COMMANDS).parse_args(["cka", "a", "b", "--probe", "p", "--max-length", "1"])
    assert e.value.code == 2
    assert "--max-length: must be >= 2 (got '1')" in capsys.readouterr().err


def test_flags_of_renamed_parameters_come_from_the_dataclasses():
    assert FLAGS == {"measures": "--measure", "sample_size": "--sample"}
    assert flag("sample_size") == "--sample" and flag("knn_k") == "--knn-k"
    assert flags(CkaOptions)["trust_remote_code"] == "--trust-remote-code"
