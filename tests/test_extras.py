"""Optional parts fail with one clear message naming the pip extra that installs them."""

from __future__ import annotations

import sys

import pytest

from peapod.extras import MissingExtra, available, require


def test_a_missing_module_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "syntok", None)  # what an uninstalled module looks like to import
    with pytest.raises(MissingExtra, match=r"extracting explanations from reviews needs syntok: pip install 'peapod\[reviews\]'"):
        require("syntok", "reviews", "extracting explanations from reviews")
    assert isinstance(MissingExtra("x"), ImportError)


def test_an_installed_module_is_returned():
    assert require("json", "none", "json").dumps([1]) == "[1]"
    assert available("json") and not available("no_such_module_for_peapod")
