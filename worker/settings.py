"""All of slotwatch's settings: one pydantic-settings model.

Every field can be set by environment variable with the prefix ``SLOTWATCH_`` and
``__`` between nested names, from a ``.env`` file in the working directory, or from
secret files (one file per setting, named like the variable without the prefix, e.g.
``/run/secrets/kafka__security__sasl_password``; the folder is
``SLOTWATCH_SECRETS_DIR``, default ``/run/secrets`` when it exists).

>>> import os
>>> os.environ["SLOTWATCH_MODEL__SLOTS"] = "64"
>>> Settings().model.slots
64
>>> del os.environ["SLOTWATCH_MODEL__SLOTS"]

The README's settings table is generated from this module
(``python -m worker.settings --markdown``) so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SecuritySettings(BaseModel):
    """How the worker authenticates to Kafka."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, required for SASL_* protocols."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (env or secret file; never logged)."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) to verify the brokers.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    ssl_password: SecretStr | None = Field(None, description="Password of the client key, if any.")
    ssl_check_hostname: bool = Field(True, description="Verify the broker's host name against its certificate.")

    @model_validator(mode="after")
    def _check(self) -> "SecuritySettings":
        if self.protocol.startswith("SASL"):
            missing = [
                n
                for n, v in (
                    ("sasl_mechanism", self.sasl_mechanism),
                    ("sasl_username", self.sasl_username),
                    ("sasl_password", self.sasl_password),
                )
                if v is None
            ]
            if missing:
                raise ValueError(
                    f"security.protocol={self.protocol} needs "
                    + ", ".join(f"SLOTWATCH_KAFKA__SECURITY__{m.upper()}" for m in missing)
                )
        return self


class KafkaSettings(BaseModel):
    """Where the readings come from and where the results go."""

    bootstrap_servers: str = Field("localhost:9092", description="Comma-separated host:port list.")
    readings_topic: str = Field("slotwatch.readings", description="Input topic (key: sensor id).")
    scores_topic: str = Field("slotwatch.scores", description="Every score, when publish_scores is on.")
    anomalies_topic: str = Field("slotwatch.anomalies", description="Scores flagged as anomalies.")
    dead_letter_topic: str = Field("slotwatch.dead-letter", description="Rejected input with a reason.")
    publish_scores: bool = Field(False, description="Publish every score, not only anomalies.")
    group_id: str = Field("slotwatch", description="Consumer group id.")
    client_id: str = Field("slotwatch-worker", description="Client id sent to the brokers.")
    max_message_bytes: int = Field(65536, gt=0, description="Readings larger than this are rejected (too_large).")
    max_poll_records: int = Field(2000, gt=0, description="Upper bound of readings per poll.")
    poll_timeout_ms: int = Field(200, ge=0, description="How long one poll waits for data.")
    fetch_max_wait_ms: int = Field(
        20, ge=0, description="How long the broker may hold a fetch for more data (latency floor; Kafka's default 500 adds up to 0.5 s)."
    )
    session_timeout_ms: int = Field(10000, gt=0, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(3000, gt=0, description="Consumer group heartbeat interval.")
    max_poll_interval_ms: int = Field(300000, gt=0, description="Max time between polls before the group evicts us.")
    request_timeout_ms: int = Field(30000, gt=0, description="Client request timeout.")
    retry_backoff_ms: int = Field(500, gt=0, description="First backoff when the broker is unreachable (doubles, capped at 30 s).")
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    # issue 12 item 3 (exactly-once output, worker.kafka.transactions)
    exactly_once: bool = Field(
        False,
        description="One Kafka transaction per checkpoint round: scores, anomalies/episodes, dead letters, changelog records "
        "and the offset commit; consumers with isolation.level=read_committed see every output once (needs "
        "SLOTWATCH_CHECKPOINT__STATE_STORE=kafka or both; the test broker does not hide aborted records, see README).",
    )
    transactional_id_prefix: str = Field(
        "slotwatch", min_length=1,
        description="Exactly-once: the producer's transactional.id is `<prefix>.<group_id>.<worker_id>`.",
    )
    worker_id: str | None = Field(
        None,
        description="Exactly-once: this worker's stable identity in its transactional.id (default: the host name, stable for "
        "a StatefulSet pod or a compose service); a restarted worker with the same id fences its predecessor. Two live "
        "workers must never share one.",
    )
    transaction_timeout_ms: int = Field(
        60000, gt=0,
        description="Exactly-once: the broker aborts a transaction open longer than this; must exceed "
        "SLOTWATCH_CHECKPOINT__INTERVAL_S (a round's transaction spans the interval) and not exceed the broker's "
        "transaction.max.timeout.ms (15 min by default).",
    )


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


def _default_secrets_dir() -> str | None:
    d = os.environ.get("SLOTWATCH_SECRETS_DIR", "/run/secrets")
    return d if os.path.isdir(d) else None


class Settings(BaseSettings):
    """slotwatch's settings (env prefix ``SLOTWATCH_``, nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="SLOTWATCH_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    handover: HandoverSettings = Field(default_factory=HandoverSettings)
    episodes: EpisodeSettings = Field(default_factory=EpisodeSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    silence: SilenceSettings = Field(default_factory=SilenceSettings)
    shutdown_grace_s: float = Field(20.0, gt=0, description="SIGTERM: finish, checkpoint, commit and exit within this.")

    @model_validator(mode="after")
    def _quiet_alias(self) -> "Settings":
        """SLOTWATCH_SCORING__QUIET (deprecated): the episodes' quiet period, unless that is set itself."""
        q = self.scoring.quiet
        if q is not None:
            own = "quiet_readings" in self.episodes.model_fields_set
            logging.getLogger("slotwatch.settings").warning(
                "SLOTWATCH_SCORING__QUIET is deprecated: %s; use SLOTWATCH_EPISODES__QUIET_READINGS, which governs "
                "the scorer's runs and the episode messages both", "ignored, SLOTWATCH_EPISODES__QUIET_READINGS is set"
                if own else f"taken as SLOTWATCH_EPISODES__QUIET_READINGS={q}")
            if not own:
                self.episodes.quiet_readings = q
        return self

    @model_validator(mode="after")
    def _exactly_once(self) -> "Settings":
        """Exactly-once needs the state in the transaction: the changelog (a local file cannot join it).

        >>> Settings(kafka={"exactly_once": True}, checkpoint={"state_store": "both"}).kafka.exactly_once
        True
        >>> try:
        ...     Settings(kafka={"exactly_once": True})
        ... except ValueError as e:
        ...     print("needs SLOTWATCH_CHECKPOINT__STATE_STORE=kafka or both (got local)" in str(e))
        True
        """
        k, c = self.kafka, self.checkpoint
        if not k.exactly_once:
            return self
        if c.state_store == "local":
            raise ValueError(
                "SLOTWATCH_KAFKA__EXACTLY_ONCE=true needs SLOTWATCH_CHECKPOINT__STATE_STORE=kafka or both (got local): "
                "a local checkpoint file cannot join the Kafka transaction, so a crash between the transaction's commit "
                "and the file write would skip readings or lose their output; the changelog records go into the transaction")
        if k.transaction_timeout_ms <= c.interval_s * 1000:
            raise ValueError(
                f"SLOTWATCH_KAFKA__TRANSACTION_TIMEOUT_MS ({k.transaction_timeout_ms}) must exceed "
                f"SLOTWATCH_CHECKPOINT__INTERVAL_S ({c.interval_s:g} s): a round's transaction stays open that long")
        return self

    @classmethod
    def load(cls, **overrides) -> "Settings":
        """Settings from env/.env/secret files; ``overrides`` win (nested dicts allowed).

        Secret files may also hold nested settings: a file named like the variable
        (``slotwatch_kafka__security__sasl_password``, any case) in the secrets folder.
        Environment variables win over secret files.
        """
        secrets = _default_secrets_dir()
        if secrets:
            nested = _nested_secrets(cls, secrets)
            for top, sub in nested.items():
                if top in overrides and isinstance(overrides[top], dict):
                    overrides[top] = _merge(sub, overrides[top])
                elif top not in overrides:
                    overrides[top] = _merge(sub, _env_subtree(top))
            return cls(_secrets_dir=secrets, **overrides)
        return cls(**overrides)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_subtree(top: str) -> dict:
    """Nested values of ``SLOTWATCH_<TOP>__...`` environment variables (they win over secret files)."""
    prefix = f"SLOTWATCH_{top.upper()}__"
    out: dict = {}
    for k, v in os.environ.items():
        if k.upper().startswith(prefix):
            parts = k[len(prefix):].lower().split("__")
            d = out
            for part in parts[:-1]:
                d = d.setdefault(part, {})
            d[parts[-1]] = v
    return out


def _nested_secrets(model: type[BaseModel], folder: str) -> dict:
    """{top: {...: value}} from secret files named after nested settings' variables."""
    files = {f.lower(): os.path.join(folder, f) for f in os.listdir(folder)}
    out: dict = {}
    for var, _, _ in settings_table(model):
        parts = var[len("SLOTWATCH_"):].lower().split("__")
        path = files.get(var.lower())
        if len(parts) < 2 or path is None or not os.path.isfile(path):
            continue
        d = out
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        with open(path, encoding="utf-8") as fh:
            d[parts[-1]] = fh.read().strip()
    return out


def settings_table(model: type[BaseModel] = Settings, prefix: str = "SLOTWATCH_") -> list[tuple[str, str, str]]:
    """(variable, default, description) for every leaf setting, for the README."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        var = f"{prefix}{name.upper()}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(settings_table(ann, var + "__"))
            continue
        if field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        shown = "—" if default is None else (f"`{default}`" if not isinstance(default, bool) else f"`{str(default).lower()}`")
        rows.append((var, shown, field.description or ""))
    return rows


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m worker.settings", description="Show slotwatch's settings.")
    p.add_argument("--markdown", action="store_true", help="print the README table of every setting")
    args = p.parse_args(argv)
    if args.markdown:
        print("| variable | default | meaning |")
        print("|---|---|---|")
        for var, default, desc in settings_table():
            print(f"| `{var}` | {default} | {desc} |")
    else:
        print(Settings.load().model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
