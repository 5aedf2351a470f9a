"""Every case file in cases/ is its own test: its `expect` block must hold (see leukodx replay)."""
from __future__ import annotations

import pytest

from leukodx.cli.replay import coverage, find_case_files, replay_file

from conftest import CASES

FILES = find_case_files([str(CASES)])


def test_the_case_library_is_large_enough():
    assert len(FILES) >= 60


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_case(path):
    result = replay_file(path)
    assert result.passed, "\n".join(f"{f.expectation}: expected {f.expected!r}, got {f.actual!r}"
                                     for f in result.failures)


def test_every_rule_is_fired_by_some_case():
    cov = coverage([replay_file(p) for p in FILES])
    assert cov["rules_not_fired"] == []


def test_every_cause_step_and_alert_is_expected_by_some_case():
    cov = coverage([replay_file(p) for p in FILES])
    assert cov["causes_not_expected"] == []
    assert cov["steps_not_expected"] == []
    assert cov["alerts_not_expected"] == []
