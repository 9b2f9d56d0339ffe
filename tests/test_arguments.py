"""Counts, seeds and the argparse types: each refuses exactly the values outside its range."""

import argparse

import numpy as np
import pytest

from ivref import arguments, cascade


def test_check_count_takes_its_range_and_names_what_is_allowed():
    for good in (1, 7, 2**31 - 1, np.int64(3), np.uint8(2)):  # NumPy's integers too
        back = arguments.check_count("n", good)
        assert back == good and type(back) is int  # as a Python int: JSON takes it
    assert arguments.check_count("n", 0, minimum=0) == 0
    assert arguments.check_count("n", None, none="the default") is None
    for bad in (0, -1, 2**31, True, np.bool_(True), 2.0, np.float64(2), "3", None):
        with pytest.raises(ValueError, match=r"n=.* must be an integer from 1 to 2\*\*31 - 1$"):
            arguments.check_count("n", bad)
    with pytest.raises(ValueError, match=r"must be None \(the default\) or an integer from 0"):
        arguments.check_count("n", -1, minimum=0, none="the default")


def test_check_seed_takes_python_and_numpy_integers_from_0_to_2_63_minus_1():
    for good in (0, 2**63 - 1, np.int64(5), np.uint64(2**63 - 1)):
        back = arguments.check_seed("seed", good)
        assert back == good and type(back) is int
    for bad in (-1, 2**63, True, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"seed=.* must be an integer from 0 to 2\*\*63 - 1"):
            arguments.check_seed("seed", bad)


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (arguments.positive_int, {"1": 1, "2147483647": 2**31 - 1},
         ["0", "-3", "2147483648", "1.5", "x"]),
        (arguments.count, {"0": 0, "2147483647": 2**31 - 1}, ["-1", "2147483648", "one"]),
        (arguments.seed_int, {"0": 0, str(2**63 - 1): 2**63 - 1}, ["-1", str(2**63), "1e3"]),
        (arguments.sampler_steps, {"1": 1, str(cascade.MAX_STEPS): cascade.MAX_STEPS},
         ["0", str(cascade.MAX_STEPS + 1)]),
        (arguments.guidance_weight, {"0": 0.0, "2.5": 2.5}, ["-0.1", "nan", "inf", "w"]),
        (arguments.fraction, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["-0.01", "1.01", "nan", "half"]),
        (arguments.positive_float, {"1e-9": 1e-9, "3": 3.0}, ["0", "-1", "inf", "nan", "x"]),
    ],
)  # fmt: skip
def test_each_argparse_type_takes_its_range_and_refuses_the_rest(parse, good, bad):
    for text, value in good.items():
        parsed = parse(text)
        assert parsed == value and type(parsed) is type(value), text
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=r"\S"):
            parse(text)


def test_guidance_setting_is_one_weight_or_one_per_named_stage():
    assert arguments.guidance_setting("1.5") == 1.5
    assert arguments.guidance_setting("base=1,ssr1=0") == {"base": 1.0, "ssr1": 0.0}
    for bad, says in [
        ("base=1,base=2", "each stage NAME once"),
        ("=1", "each stage NAME once"),
        ("base=nan", r"must be a number from 0 \(no guidance\) to 1000"),
        ("base=-1", r"must be a number from 0 \(no guidance\) to 1000"),
        ("base=1e38", r"must be a number from 0 \(no guidance\) to 1000"),
        ("base=", "expected a number"),
        ("x", "expected a number"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            arguments.guidance_setting(bad)
