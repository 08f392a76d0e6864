"""The model artifact contract: the network, and the versioned directory that carries it.

An artifact is a directory::

    <models>/<version>/model.keras      the Keras 3 model, native format, no Lambda layers
    <models>/<version>/manifest.json    features, scaling, architecture, calibration, data, metrics
    <models>/latest                     a one-line file naming the newest version (optional)

The saved network is the *sequence* form: ``Input(shape=(None, F))`` → stateful-free
LSTM layers (``return_sequences=True``) → ``Dense(F)`` named ``head``.  Its output at
step t is the expected value of the reading at step t+1 (in scaled units).  The worker
rebuilds the same layers as a stateful model with ``keras.Input(batch_shape=(B, 1, F))``
and copies the weights (see :mod:`worker.core.engine`); training fits the sequence form.
This module is the one place that knows the layout.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
LATEST_POINTER = "latest"


class ArtifactError(ValueError):
    """The artifact is missing, damaged, or does not fit the settings; the message says what."""


@dataclass
class Calibration:
    """How reconstruction errors become scores (see :mod:`worker.core.scorer`)."""

    threshold: float = 0.999
    warmup: int = 32
    short_window: int = 4
    long_window: int = 1000
    error_mean: float = 1.0
    error_std: float = 0.5
    residual_std: list[float] = field(default_factory=list)  # per feature, scaled units
    flat_window: int = 0  # > 0: the stuck-sensor check is on (worker.core.adaptive.movement_step); 0 = off
    flat_limit: float = 0.0  # unused since the adaptive scorer (stillness against own history); read so older artifacts load
    level_window: int = 0  # EWMA window of the level channel (worker.core.adaptive); 0 = off (older artifacts)
    level_scale: float = 0.0  # level z that the channel divides by (calibrated); 0 = off
    level_feature_scale: list[float] = field(default_factory=list)  # per feature (calibrated); empty: level_scale for all (older artifacts)
    level_feature_scale_unseen: list[float] = field(default_factory=list)  # per feature, sensors unseen in training (worker.core.level_kinds); empty: level_feature_scale

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ArtifactError(f"calibration.threshold must be in (0, 1), got {self.threshold}")
        if self.short_window < 1 or self.long_window < 2 or self.warmup < 0:
            raise ArtifactError("calibration windows must be positive")
        if self.flat_window < 0 or self.flat_limit < 0 or self.level_window < 0 or self.level_scale < 0:
            raise ArtifactError("calibration.flat_window, flat_limit, level_window and level_scale must be >= 0")
        if any(not v > 0 for v in [*self.level_feature_scale, *self.level_feature_scale_unseen]):
            raise ArtifactError("calibration.level_feature_scale and level_feature_scale_unseen must hold values > 0")
        if self.error_std <= 0:
            raise ArtifactError(f"calibration.error_std must be > 0, got {self.error_std}")


@dataclass
class Scaling:
    """Per-feature centring and scale: a fleet-wide default and per-sensor values."""

    mean: list[float]
    std: list[float]
    sensors: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # id -> {"mean": [...], "std": [...]}

    def for_sensor(self, sensor_id: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(mean, std, seen_in_training) for one sensor."""
        s = self.sensors.get(sensor_id)
        if s is None:
            return np.asarray(self.mean, dtype=np.float64), np.asarray(self.std, dtype=np.float64), False
        return np.asarray(s["mean"], dtype=np.float64), np.asarray(s["std"], dtype=np.float64), True


@dataclass
class Manifest:
    model_version: str
    features: list[str]
    units: list[int]
    scaling: Scaling
    calibration: Calibration
    training: dict[str, Any] = field(default_factory=dict)  # summary of the data and the run
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics
    format_version: int = FORMAT_VERSION
    created_at: str = ""

    @property
    def n_features(self) -> int:
        return len(self.features)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        try:
            fv = int(d["format_version"])
            if fv != FORMAT_VERSION:
                raise ArtifactError(f"manifest format_version {fv} is not supported (this slotwatch reads {FORMAT_VERSION})")
            sc = d["scaling"]
            return cls(
                model_version=str(d["model_version"]),
                features=[str(f) for f in d["features"]],
                units=[int(u) for u in d["units"]],
                scaling=Scaling(mean=list(sc["mean"]), std=list(sc["std"]), sensors=dict(sc.get("sensors", {}))),
                calibration=Calibration(**d["calibration"]),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                format_version=fv,
                created_at=str(d.get("created_at", "")),
            )
        except KeyError as e:
            raise ArtifactError(f"manifest.json lacks the field {e.args[0]!r}") from None
        except TypeError as e:
            raise ArtifactError(f"manifest.json has a malformed field: {e}") from None

    def validate(self) -> None:
        f = self.n_features
        if f < 1:
            raise ArtifactError("manifest lists no features")
        if len(set(self.features)) != f:
            raise ArtifactError(f"manifest features repeat a name: {self.features}")
        if not self.units or any(u < 1 for u in self.units):
            raise ArtifactError(f"manifest units must be positive, got {self.units}")
        for name, arr in (("scaling.mean", self.scaling.mean), ("scaling.std", self.scaling.std)):
            if len(arr) != f:
                raise ArtifactError(f"{name} has {len(arr)} values for {f} features")
        if any(not np.isfinite(s) or s <= 0 for s in self.scaling.std):
            raise ArtifactError("scaling.std must be finite and > 0")
        if self.calibration.residual_std and len(self.calibration.residual_std) != f:
            raise ArtifactError(f"calibration.residual_std has {len(self.calibration.residual_std)} values for {f} features")


def build_network(n_features: int, units: list[int], batch_size: int | None = None, stateful: bool = False, seed: int | None = None,
                  steps: int | None = 1):
    """The slotwatch network: stacked LSTMs and a Dense ``head`` predicting the next reading.

    ``batch_size=None, stateful=False`` gives the sequence form used for training and
    saving; ``batch_size=B, stateful=True`` gives the streaming form used by the engine
    (``keras.Input(batch_shape=(B, 1, F))``).  Weights are interchangeable between forms.
    ``steps`` (stateful form only) is the time length of one batch: 1 for the engine,
    a chunk length for stateful training (truncated back-propagation through time).
    """
    import keras

    if stateful:
        if batch_size is None:
            raise ValueError("a stateful network needs a fixed batch size")
        inp = keras.Input(batch_shape=(batch_size, steps, n_features), name="readings")
    else:
        inp = keras.Input(shape=(None, n_features), batch_size=batch_size, name="readings")
    x = inp
    for i, u in enumerate(units):
        kw = {}
        if seed is not None:
            kw = dict(
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 10 * i),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 10 * i + 1),
            )
        x = keras.layers.LSTM(u, return_sequences=True, stateful=stateful, name=f"lstm_{i}", **kw)(x)
    kw = {} if seed is None else dict(kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 999))
    out = keras.layers.Dense(n_features, name="head", **kw)(x)
    return keras.Model(inp, out, name="slotwatch_lstm")


@dataclass
class Artifact:
    path: Path
    manifest: Manifest
    model: Any  # keras.Model, sequence form

    @property
    def version(self) -> str:
        return self.manifest.model_version

    def weights(self) -> list[np.ndarray]:
        return self.model.get_weights()


def resolve(path: str | os.PathLike) -> Path:
    """The artifact directory ``path`` names: itself, or what its ``latest`` pointer says."""
    p = Path(path)
    if (p / MANIFEST_FILE).is_file():
        return p
    pointer = p / LATEST_POINTER
    if pointer.is_symlink() or pointer.is_dir():
        target = pointer.resolve()
        if (target / MANIFEST_FILE).is_file():
            return target
    if pointer.is_file():
        name = pointer.read_text().strip()
        target = (p / name).resolve()
        if (target / MANIFEST_FILE).is_file():
            return target
        raise ArtifactError(f"{pointer} names {name!r}, but {target} holds no {MANIFEST_FILE}")
    if not p.exists():
        raise ArtifactError(f"no model at {p}: train one with `slotwatch train` or set SLOTWATCH_MODEL__PATH")
    raise ArtifactError(f"{p} is neither an artifact (no {MANIFEST_FILE}) nor a folder with a `{LATEST_POINTER}` pointer")


def save(directory: str | os.PathLike, model, manifest: Manifest, *, set_latest: bool = True) -> Path:
    """Write ``model`` and ``manifest`` to ``directory`` atomically (temp dir + rename).

    With ``set_latest`` the parent's ``latest`` pointer is moved to it afterwards.
    """
    manifest.validate()
    _check_model_fits(model, manifest)
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        raise ArtifactError(f"{out} exists already; artifacts are immutable, pick a new version")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save(tmp / MODEL_FILE)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
    os.replace(tmp, out)
    if set_latest:
        point_latest(out)
    return out


def point_latest(artifact_dir: str | os.PathLike) -> Path:
    """Atomically make ``<parent>/latest`` name ``artifact_dir``."""
    d = Path(artifact_dir)
    pointer = d.parent / LATEST_POINTER
    tmp = d.parent / f".{LATEST_POINTER}.tmp"
    tmp.write_text(d.name + "\n")
    os.replace(tmp, pointer)
    return pointer


def load(path: str | os.PathLike, *, features: list[str] | None = None) -> Artifact:
    """Load and check an artifact.  ``features``: what the settings expect, if anything."""
    import keras

    d = resolve(path)
    try:
        raw = json.loads((d / MANIFEST_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{d / MANIFEST_FILE} is not valid JSON: {e}") from None
    manifest = Manifest.from_json(raw)
    manifest.validate()
    if features is not None and list(features) != manifest.features:
        raise ArtifactError(
            f"artifact {manifest.model_version} has features {manifest.features}, "
            f"the settings expect {list(features)} (SLOTWATCH_MODEL__FEATURES)"
        )
    mf = d / MODEL_FILE
    if not mf.is_file():
        raise ArtifactError(f"{d} has no {MODEL_FILE}")
    try:
        model = keras.saving.load_model(mf, safe_mode=True, compile=False)
    except Exception as e:  # keras raises many kinds here
        raise ArtifactError(f"{mf} does not load safely: {e}") from None
    _check_model_fits(model, manifest)
    return Artifact(path=d, manifest=manifest, model=model)


def _check_model_fits(model, manifest: Manifest) -> None:
    f_in = model.input_shape[-1]
    f_out = model.output_shape[-1]
    if f_in != manifest.n_features or f_out != manifest.n_features:
        raise ArtifactError(
            f"model.keras takes {f_in} and gives {f_out} features, the manifest lists {manifest.n_features} ({manifest.features})"
        )
    lstms = [l for l in model.layers if l.__class__.__name__ == "LSTM"]
    units = [int(l.units) for l in lstms]
    if units != list(manifest.units):
        raise ArtifactError(f"model.keras has LSTM units {units}, the manifest says {manifest.units}")
    if any(l.__class__.__name__ == "Lambda" for l in model.layers):
        raise ArtifactError("model.keras contains a Lambda layer; slotwatch artifacts must load with safe_mode")
    if not any(l.name == "head" for l in model.layers):
        raise ArtifactError("model.keras has no layer named 'head'")
