"""The examples in memlib's docstrings run and print what they say."""
import doctest

import memlib


def test_package_docstring_examples():
    result = doctest.testmod(memlib)
    assert result.attempted >= 4 and result.failed == 0
