"""The settings sections other than Kafka's: model, scoring, episodes, checkpoint, handover,
silence, metrics, log and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class ModelSettings(BaseModel):
    """The model artifact and how the scoring core uses it."""

    path: Path = Field(Path("models"), description="Artifact directory, or a folder whose `latest` pointer names one.")
    slots: int = Field(256, gt=0, description="B: batch slots of the stateful LSTM (sensors scored at once).")
    when_full: Literal["page", "reject"] = Field(
        "page", description="All slots taken: page the least recently used sensor out, or reject (no_free_slot)."
    )
    max_gap_s: float = Field(3600.0, gt=0, description="A gap longer than this resets the sensor's state and warm-up.")
    threshold: float | None = Field(None, gt=0, lt=1, description="Override the artifact's score threshold (0..1).")
    warmup: int | None = Field(None, ge=0, description="Override the artifact's warm-up length (readings).")
    recent_readings: int = Field(
        32, ge=1, description="Readings kept per sensor in state and checkpoints; a new model version rebuilds each sensor's "
        "state from them (32: the next error within ~1% of a long history's, see benchmarks/handover.py). Checkpoints "
        "with another length restore (newest kept / padded)."
    )
    features: list[str] | None = Field(
        None,
        description="Expected feature names, comma-separated (`temp,rpm`) or a JSON list (`[\"temp\",\"rpm\"]`); "
        "the worker refuses an artifact with others.",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _features_list(cls, v):
        """``temp,rpm`` (what ``--features`` takes) as well as the JSON form ``["temp","rpm"]``.

        >>> ModelSettings(features="temp, rpm").features
        ['temp', 'rpm']
        >>> ModelSettings(features='["temp","rpm"]').features
        ['temp', 'rpm']
        >>> ModelSettings(features="").features is None
        True
        """
        return parse_name_list(v)


def parse_name_list(v):
    """A list of names from a comma-separated string or a JSON list (other values unchanged).

    pydantic-settings decodes a JSON list itself for a top-level field, but hands a nested
    field's value over as the raw string: both forms arrive here.

    >>> parse_name_list("a,b"), parse_name_list(' ["a", "b"] '), parse_name_list(["a"]), parse_name_list("  ")
    (['a', 'b'], ['a', 'b'], ['a'], None)
    """
    if not isinstance(v, str):
        return v
    text = v.strip()
    if not text:
        return None
    if text.startswith("["):
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a JSON list ({e.msg}); give names separated by commas, e.g. temp,rpm") from None
    return [name.strip() for name in text.split(",") if name.strip()]


class ScoringSettings(BaseModel):
    """How the scorer adapts (issue 9; see worker/core/adaptive.py and README "How scoring works")."""

    accept_after: int = Field(
        600, ge=0,
        description="Horizon, in readings: an episode (a run of flags) this long is accepted as the sensor's new normal "
                    "(the reading says accepted); 0 = never.",
    )
    quiet: int | None = Field(
        None, ge=1,
        description="Deprecated alias of SLOTWATCH_EPISODES__QUIET_READINGS (used only when that is not set; logs a warning).",
    )
    level: bool = Field(True, description="Use the artifact's level channel (is the sensor still at its usual level?).")
    move_window: int = Field(1000, ge=2, description="Readings over which a sensor's own share of moving readings is learned.")
    flat_min_run: int = Field(4, ge=0, description="Unchanged readings before a sensor can be flagged as stuck; 0 = off.")
    flat_p_max: float = Field(
        0.9, gt=0, lt=1, description="Cap of a sensor's move rate in the stuck test (readings are not independent)."
    )


class EpisodeSettings(BaseModel):
    """Alerts as episodes (worker.core.episodes): one message when a sensor starts deviating, one when it stops."""

    quiet_readings: int = Field(
        30, ge=0,
        description="An episode closes after this many unflagged readings in a row (0: off; see quiet_s); the same quiet "
                    "period ends the scorer's run of flags, whose horizon count then restarts.",
    )
    quiet_s: float = Field(
        0.0, ge=0, description="...or at an unflagged reading this many seconds of stream time after the last flagged one (0: off), whichever first."
    )
    publish_readings: bool = Field(
        False, description="Also publish every flagged reading's score message on the anomalies topic (default: episode messages only)."
    )
    top_features: int = Field(3, ge=1, description="Features named (most deviating first) in episode and anomaly messages.")

    @model_validator(mode="after")
    def _check(self) -> "EpisodeSettings":
        if self.quiet_readings == 0 and self.quiet_s == 0:
            raise ValueError("episodes need a quiet period: set SLOTWATCH_EPISODES__QUIET_READINGS or SLOTWATCH_EPISODES__QUIET_S above 0")
        return self

    def params(self):
        """The core's :class:`~worker.core.episodes.EpisodeParams` of these settings."""
        from worker.core.episodes import EpisodeParams

        return EpisodeParams(self.quiet_readings, self.quiet_s, self.top_features)


class CheckpointSettings(BaseModel):
    """Durable per-partition state."""

    dir: Path = Field(Path("checkpoints"), description="Where checkpoints are written (a volume in containers).")
    interval_s: float = Field(30.0, gt=0, description="Checkpoint at least this often (seconds)...")
    interval_readings: int = Field(100_000, gt=0, description="...or after this many readings, whichever first.")
    generations: int = Field(3, ge=2, description="Checkpoint generations kept per partition.")
    allow_fresh_start: bool = Field(
        False,
        description="A partition whose checkpoints are all corrupt: start its sensors fresh from the committed "
        "offset instead of refusing to start (a checkpoint of another model version restores warm, see handover).",
    )
    # issue 12 (state changelog in Kafka, worker.checkpointing.changelog)
    state_store: Literal["local", "kafka", "both"] = Field(
        "local",
        description="Where checkpoint rounds go: `local` files, the `kafka` state changelog (no shared disk needed: "
        "a partition's state follows it to any worker), or `both` (a current local checkpoint restores faster).",
    )
    changelog_topic: str = Field(
        "slotwatch.state-changelog",
        description="State changelog topic (compacted, one partition per readings partition; `--create-topics` creates it).",
    )
    changelog_stall_s: float = Field(
        30.0, gt=0,
        description="A changelog restore that reads nothing new for this long fails: the worker stops with exit code 3 (a restart retries).",
    )


class HandoverSettings(BaseModel):
    """Taking over a new model version while running (the `latest` pointer of SLOTWATCH_MODEL__PATH)."""

    live_swap: bool = Field(
        True, description="Watch the models folder's `latest` pointer (and SIGHUP) and hand the running worker over to a "
        "new version without a restart."
    )
    watch_interval_s: float = Field(10.0, gt=0, description="How often the `latest` pointer is read (seconds).")
    chunk_sensors: int = Field(
        4096, gt=0, description="Sensors warmed under the candidate per poll-loop turn (the worker keeps consuming between chunks)."
    )
    shadow_readings: int = Field(
        0, ge=0, description="Readings the warmed candidate scores beside the current model, unpublished, before it is "
        "promoted (0: promote as soon as every sensor is warmed)."
    )
    max_flag_rate_diff: float = Field(
        0.01, ge=0, le=1, description="Shadow check: promote only if the candidate's share of flagged readings is within "
        "this of the current model's (absolute, e.g. 0.01 = one percentage point)."
    )
    force: bool = Field(False, description="Promote a candidate even when the shadow check fails (it is still scored in shadow and logged).")


class SilenceSettings(BaseModel):
    """Silent sensors (issue 16): a sensor whose partition's stream time moves on without it."""

    enabled: bool = Field(True, description="Report sensors that stop reporting as `silent` episodes on the anomalies topic.")
    multiple: float = Field(
        5.0, gt=1, description="Silent after this many typical intervals of the sensor without a reading (stream time)."
    )
    floor_s: float = Field(60.0, ge=0, description="...and never before this many seconds of stream time.")
    spread_weight: float = Field(
        2.0, ge=0, description="Irregular sensors get more room: the limit is widened by exp(weight x spread of log-intervals)."
    )
    min_intervals: int = Field(
        3, ge=1, description="Intervals learned before a sensor the artifact does not know can be reported silent."
    )
    watchdog_s: float = Field(
        600.0, gt=0, description="Log a warning when an owned partition's stream time has not advanced for this long (wall clock)."
    )
    last_seen_size: int = Field(
        100_000, ge=0, description="Evicted sensors whose silence is still tracked (oldest forgotten first)."
    )


class MetricsSettings(BaseModel):
    """The HTTP endpoint for /metrics, /healthz and /readyz."""

    host: str = Field("0.0.0.0", description="Bind address of the metrics/health server.")
    port: int = Field(9108, ge=0, le=65535, description="Port (0 picks a free one).")


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="json: one JSON object per line.")


class LimitsSettings(BaseModel):
    """Bounds that keep hostile or broken input from crashing or exhausting the worker (issue 10)."""

    max_sensors: int = Field(
        100_000, gt=0,
        description="Sensors held per worker. A new sensor beyond it evicts sensors idle longer than "
        "SLOTWATCH_MODEL__MAX_GAP_S first; when none is idle it is rejected (no_capacity).",
    )
    max_future_s: float = Field(
        86_400.0, ge=0, description="Readings dated further than this ahead of the worker's clock are rejected (bad_timestamp)."
    )
    max_sensor_id_bytes: int = Field(
        256, gt=0, description="Longest sensor id in UTF-8 bytes; longer or invalid ids are rejected (bad_sensor_id)."
    )
    rejection_log_interval_s: float = Field(
        10.0, gt=0, description="Rejected readings are logged as one WARNING summary (counts by reason, one example) per interval."
    )
    revoke_budget_fraction: float = Field(
        0.5, gt=0, lt=1,
        description="On revocation, flush and checkpoint within this fraction of SLOTWATCH_KAFKA__SESSION_TIMEOUT_MS "
        "(the rest is left to the next owner's replay).",
    )
