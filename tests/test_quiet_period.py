"""One quiet period: the adaptive scorer's run of flags and the episode tracker's episode end
at the same reading (SLOTWATCH_EPISODES__QUIET_READINGS / QUIET_S govern both)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from tests.conftest import sine_fleet
from worker.core import artifact as art
from worker.core.adaptive import AdaptParams
from worker.core.detector import SlotDetector
from worker.core.episodes import EpisodeParams
from worker.core.readings import Reading
from worker.settings import Settings
from worker.state.table import NO_TS

STEP_MS = 1000


def _artifact(path):
    a = art.load(path)
    m = copy.deepcopy(a.manifest)
    m.calibration.level_window, m.calibration.level_scale = 8, 1.0
    return art.Artifact(a.path, m, a.model)


def _incidents() -> np.ndarray:
    """Short level incidents separated by gaps longer than a 10-reading quiet period and shorter than 30."""
    v = sine_fleet(1, 700, 1, seed=7)[0, :, 0].copy()
    for start in (300, 345, 395, 450):
        v[start : start + 6] += 6.0
    return v


def _walk(det, values):
    """Feed one reading at a time; per reading: (scorer run open, tracker episode open, its events)."""
    rows = []
    for t, v in enumerate(values):
        (o,) = det.process([Reading("s1", t * STEP_MS, np.atleast_1d(np.float64(v)))])
        c, r = det.table.cols, det.table.index["s1"]
        rows.append((bool(c["adapt_len"][r] > 0), bool(c["ep_start_ts"][r] != NO_TS), o.episodes or []))
    return rows


@pytest.mark.parametrize("episodes", [EpisodeParams(quiet_readings=10), EpisodeParams(quiet_readings=0, quiet_s=12)],
                         ids=["readings", "seconds"])
def test_the_scorer_run_and_the_episode_end_at_the_same_reading(artifact_1f, episodes):
    # the scorer's own setting says 30: the episode settings win, for both
    det = SlotDetector(_artifact(artifact_1f), slots=4, scoring=AdaptParams(accept_after=0, quiet=30), episodes=episodes)
    assert det.adapt.quiet == episodes.quiet_readings
    walk = _walk(det, _incidents())
    closes = [t for t, (_, _, ev) in enumerate(walk) for e in ev if e.event == "close"]
    opens = [t for t, (_, _, ev) in enumerate(walk) for e in ev if e.event == "open"]
    assert len(closes) >= 3 and len(opens) >= 4  # gaps longer than the quiet period: separate episodes
    assert all(e.close_reason == "quiet" for _, _, ev in walk for e in ev if e.event == "close")
    mismatch = [t for t, (run, ep, _) in enumerate(walk) if run != ep]
    assert mismatch == []  # after every reading: the scorer's run is open exactly while the episode is
    for t in closes:
        assert walk[t - 1][0] and not walk[t][0]  # the run ended at the close's reading, not before or after


def test_a_longer_scorer_quiet_no_longer_outlives_the_episode(artifact_1f):
    """What unifying changes: the horizon counts one episode, as the messages say."""
    det = SlotDetector(_artifact(artifact_1f), slots=4, scoring=AdaptParams(accept_after=0),
                       episodes=EpisodeParams(quiet_readings=10))
    walk = _walk(det, _incidents())
    quiet_runs = sum(1 for t in range(1, len(walk)) if walk[t - 1][0] and not walk[t][0])
    closes = sum(1 for _, _, ev in walk for e in ev if e.event == "close")
    assert quiet_runs == closes >= 3


def test_default_scoring_unchanged_when_only_the_episode_default_moves(artifact_1f):
    # defaults: one quiet period of 30 (the scorer's former default), so default scores did not change
    assert Settings().episodes.quiet_readings == AdaptParams().quiet == EpisodeParams().quiet_readings == 30


def test_deprecated_scoring_quiet_is_an_alias_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="slotwatch.settings"):
        s = Settings(scoring={"quiet": 12})
    assert s.episodes.quiet_readings == 12
    assert "SLOTWATCH_SCORING__QUIET is deprecated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slotwatch.settings"):
        both = Settings(scoring={"quiet": 12}, episodes={"quiet_readings": 7})
    assert both.episodes.quiet_readings == 7 and "ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slotwatch.settings"):
        Settings()
    assert "deprecated" not in caplog.text
