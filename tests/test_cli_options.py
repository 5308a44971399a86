"""CLI options derived from config dataclasses and function signatures (mechwork.cli.options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from mechwork.cli.options import Opt, add_options, docs, given, int_arg, key_values, parse_value, shared
from mechwork.core.config import Config
from mechwork.core.errors import ConfigError


@dataclass(frozen=True)
class Toy(Config):
    """A config to derive options from.

    Parameters
    ----------
    width : int
        Number of units (e.g. 64). More text that is not help.
    rate, decay : float
        Step sizes (shared text).
    mode : {"fast", "slow"}
        How to run.
    kind : "a" or "b"
        Typed as a Literal.
    sizes : tuple of int
        Sizes of something.
    fused : bool
        Fuse the kernels.
    name : str or None
        A name.
    """

    width: int = 16
    rate: float = 0.1
    decay: float = 0.0
    mode: str = "fast"
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    fused: bool = True
    name: str | None = None


def _parser(*fields, **kw):
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_options(p, Toy, fields, **kw)
    return p


def test_docs_reads_numpy_parameters():
    d = docs(Toy)
    assert d["width"] == ("int", "Number of units (e.g. 64). More text that is not help.")
    assert d["rate"][1] == d["decay"][1] == "Step sizes (shared text)."
    assert d["mode"][0] == '{"fast", "slow"}'


def test_types_defaults_choices_and_help_come_from_the_config():
    p = _parser("width", "rate", "mode", "kind", "sizes", "fused", "name")
    args = p.parse_args(["--width", "1e3", "--rate", "0.5", "--mode", "slow", "--sizes", "3,4,5", "--no-fused"])
    assert given(args, Toy) == {"width": 1000, "rate": 0.5, "mode": "slow", "sizes": [3, 4, 5], "fused": False}
    cfg = Toy().replace(**given(args, Toy))
    assert cfg.width == 1000 and cfg.fused is False and cfg.kind == "a"
    assert given(p.parse_args([]), Toy) == {}  # nothing given: the config's own defaults stay
    text = p.format_help()
    assert "Number of units (e.g. 64) (default: 16)" in " ".join(text.split())
    assert "{fast,slow}" in text and "{a,b}" in text and "More text" not in text
    for bad in (["--mode", "medium"], ["--kind", "c"], ["--width", "2.5"], ["--rate", "x"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            p.parse_args(bad)


def test_opt_overrides_sweep_flag_and_required():
    p = _parser(
        Opt("width", flag="widths", sweep=True),
        Opt("kind", sweep=True),
        Opt("fused", flag="unfused", help="run unfused"),
        Opt("name", required=True),
        Opt("mode", choices=lambda: ["fast", "slow", "odd"]),
    )
    args = p.parse_args(["--widths", "8,16", "--kind", "a,b", "--unfused", "--name", "x", "--mode", "odd"])
    assert given(args, Toy) == {"width": [8, 16], "kind": ["a", "b"], "fused": False, "name": "x", "mode": "odd"}
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        p.parse_args(["--name", "x", "--kind", "a,z"])
    with pytest.raises(ConfigError, match="no field or parameter 'widht'"):
        _parser("widht")


def test_shared_namespace_skips_repeated_flags():
    @dataclass(frozen=True)
    class Other(Config):
        """Parameters
        ----------
        width : int
            Other width.
        depth : int
            Depth.
        """

        width: int = 3
        depth: int = 1

    p = argparse.ArgumentParser()
    add_options(p, Toy, ["width"], ns="arch")
    add_options(p, Other, ["width", "depth"], ns="arch")
    assert given(p.parse_args(["--width", "5", "--depth", "2"]), "arch") == {"width": 5, "depth": 2}


def test_function_parameters_are_targets_too():
    def f(x, *, batch_size: int = 32, packing: str = "concat") -> None:
        """Do it.

        Parameters
        ----------
        x : thing
        batch_size : int
            Rows per pass.
        packing : {"concat", "pad"}
            How.
        """

    p = argparse.ArgumentParser()
    add_options(p, f, ["batch_size", "packing"])
    assert given(p.parse_args(["--packing", "pad"]), f) == {"packing": "pad"}
    assert "Rows per pass (default: 32)" in " ".join(p.format_help().split())


def test_shared_flags_one_table():
    p = argparse.ArgumentParser(parents=[shared("backend", "device", "seed", "json", device="cpu", seed=1)])
    a = p.parse_args([])
    assert (a.backend, a.device, a.seed, a.json) == ("auto", "cpu", 1, False)
    assert "(default: cpu)" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--backend", "hf"])
    with pytest.raises(KeyError, match="no shared flag"):
        shared("devcie")


def test_key_values_and_value_parsing():
    assert key_values("a=1,b=x,c-d=true", flag="--o") == {"a": 1, "b": "x", "c_d": True}
    assert key_values(["a=0.5", "b=none", "c= x "], flag="--o") == {"a": 0.5, "b": None, "c": "x"}
    assert key_values(None, flag="--o") == {}
    with pytest.raises(ConfigError, match="--o takes KEY=VALUE"):
        key_values("a=1,oops", flag="--o")
    assert [parse_value(v) for v in ("-3", "1e-3", "False", "null", "abc")] == [-3, 1e-3, False, None, "abc"]
    assert int_arg("2_000") == 2000 and int_arg("1e6") == 1_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        int_arg("1.5")


def test_sae_train_options_map_onto_train_config():
    from mechwork.cli import build_parser
    from mechwork.cli.sae import _train_config

    argv = ["sae", "train", "--model", "toy-mixed", "--site", "resid_post.1", "--k", "4,8", "--width", "64"]
    argv += ["--seeds", "0,1", "--dense", "--batch-size", "128", "--lr", "1e-3", "--out", "o", "--arch", "topk"]
    cfg = _train_config(build_parser().parse_args(argv))
    assert [(s.k, s.d_sae, s.seed) for s in cfg.saes] == [(4, 64, 0), (4, 64, 1), (8, 64, 0), (8, 64, 1)]
    assert (cfg.sparse, cfg.batch_size, cfg.lr, cfg.model, cfg.out) == (False, 128, 1e-3, "toy-mixed", "o")
    plain = _train_config(build_parser().parse_args(["sae", "train", "--out", "o"]))
    assert plain.sparse is True and plain.batch_size == 2048


def test_check_choices_reads_the_literal_annotation():
    from mechwork.core.config import check_choices

    @dataclass(frozen=True)
    class Checked(Config):
        kind: Literal["alpha", "beta"] = "alpha"
        other: Literal["x"] | None = None
        free: str = "anything"

        def __post_init__(self) -> None:
            check_choices(self)

    assert Checked(kind="beta", other="x").kind == "beta" and Checked().other is None
    with pytest.raises(
        ConfigError, match=r"Checked.kind must be one of 'alpha', 'beta'; got 'bta' \(did you mean 'beta'\?\)"
    ):
        Checked(kind="bta")
    with pytest.raises(ConfigError, match="Checked.other"):
        Checked(other="y")
    with pytest.raises(ConfigError, match="kind"):  # JSON goes through the same check
        Checked.from_dict({"kind": "gamma"})
