"""The root settings model (:class:`Settings`: env prefix ``SLOTWATCH_``, ``.env``, secret files)
and :func:`settings_table`, the README's table of every setting."""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.settings.kafka import KafkaSettings
from worker.settings.sections import (
    CheckpointSettings,
    EpisodeSettings,
    HandoverSettings,
    LimitsSettings,
    LogSettings,
    MetricsSettings,
    ModelSettings,
    ScoringSettings,
    SilenceSettings,
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
