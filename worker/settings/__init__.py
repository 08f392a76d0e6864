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

from worker.settings.kafka import KafkaSettings, SecuritySettings
from worker.settings.root import Settings, settings_table
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
    parse_name_list,
)

__all__ = [
    "CheckpointSettings", "EpisodeSettings", "HandoverSettings", "KafkaSettings", "LimitsSettings", "LogSettings",
    "MetricsSettings", "ModelSettings", "ScoringSettings", "SecuritySettings", "Settings", "SilenceSettings",
    "parse_name_list", "settings_table",
]
