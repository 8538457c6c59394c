"""The test-suite helpers of tests/conftest.py: ``require`` (optional dependencies) and the
``data`` marker on tests that read the shared data."""

import sys

import pytest

from conftest import require

Failed = pytest.fail.Exception
Skipped = pytest.skip.Exception

MISSING = "instembed_no_such_module_for_require"


def outcome_of_require(name: str) -> BaseException:
    """The skip / fail outcome raised by ``require(name)``, caught (a skip raised inside a test
    would otherwise turn the test itself into a skip instead of a failure)."""
    try:
        require(name)
    except (Failed, Skipped) as err:
        return err
    raise AssertionError(f"require({name!r}) returned a module")


def test_require_returns_an_installed_module():
    import json

    assert require("json") is json


@pytest.mark.parametrize("name", [MISSING, f"{MISSING}.sub", "json.no_such_submodule"])
@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_require_fails_under_ci_when_missing(monkeypatch, name, ci):
    monkeypatch.setenv("CI", ci)
    err = outcome_of_require(name)
    assert isinstance(err, Failed), repr(err)
    assert f"'{name}' is not installed" in str(err) and "required under CI" in str(err)


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_require_skips_outside_ci_when_missing(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    err = outcome_of_require(MISSING)
    assert isinstance(err, Skipped), repr(err)
    assert f"'{MISSING}' is not installed" in str(err)


def test_require_treats_a_module_hidden_from_import_as_missing(monkeypatch):
    # sys.modules[name] = None makes `import name` raise ModuleNotFoundError: the way to
    # simulate an uninstalled optional dependency (here pycocotools) on a machine that has it
    # (hide the submodule too: another test may have imported it already)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    monkeypatch.setenv("CI", "true")
    assert isinstance(outcome_of_require("pycocotools.mask"), Failed)
    monkeypatch.delenv("CI")
    assert isinstance(outcome_of_require("pycocotools.mask"), Skipped)


def test_require_propagates_other_import_errors(monkeypatch, tmp_path):
    # an installed module that fails on import with a missing dependency of its own is a real
    # error, not an optional dependency to skip
    (tmp_path / "instembed_broken_mod.py").write_text("import instembed_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(ModuleNotFoundError, match="instembed_no_such_dependency"):
        require("instembed_broken_mod")


def test_tests_without_shared_data_are_not_marked(request):
    assert request.node.get_closest_marker("data") is None


def test_shared_data_fixture_adds_the_data_marker(request, shared_data):
    assert request.node.get_closest_marker("data") is not None
    shared_data("stardist_example")
