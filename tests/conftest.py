"""Shared fixtures: a real, small, briefly trained Keras model saved as an artifact."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest

from worker.core import artifact as art


def sine_fleet(n_sensors: int, steps: int, n_features: int = 1, seed: int = 0) -> np.ndarray:
    """(n_sensors, steps, F) smooth periodic signals with noise, different phase per sensor."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n_sensors, 1, n_features))
    period = rng.uniform(20, 40, (n_sensors, 1, n_features))
    level = rng.normal(0, 1, (n_sensors, 1, n_features))
    return level + np.sin(2 * np.pi * t / period + phase) + 0.05 * rng.normal(size=(n_sensors, steps, n_features))


def make_artifact(tmp: Path, features: list[str], units: list[int], *, epochs: int = 2, seed: int = 7,
                  sensors_scaling: dict | None = None, warmup: int = 8, version: str | None = None,
                  data_seed: int | None = None) -> Path:
    """Fit the sequence network for a few epochs on sine waves and save it with a manifest.

    ``seed`` draws the initial weights and (unless ``data_seed`` is given) the training data."""
    import keras

    keras.utils.set_random_seed(seed)
    f = len(features)
    net = art.build_network(f, units, seed=seed)
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    data = sine_fleet(32, 65, f, seed=seed if data_seed is None else data_seed).astype("float32")
    net.fit(data[:, :-1], data[:, 1:], epochs=epochs, batch_size=16, verbose=0, shuffle=False)
    manifest = art.Manifest(
        model_version=version or f"test-{'-'.join(features)}-{'x'.join(map(str, units))}",
        features=features,
        units=units,
        scaling=art.Scaling(mean=[0.0] * f, std=[1.0] * f, sensors=sensors_scaling or {}),
        calibration=art.Calibration(threshold=0.999, warmup=warmup, short_window=4, long_window=200,
                                    error_mean=1.0, error_std=0.5, residual_std=[0.5] * f),
        training={"data": "sine fixture"},
    )
    return art.save(tmp / manifest.model_version, net, manifest)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def artifact_1f(models_dir) -> Path:
    """One feature, one LSTM layer of 16 units; sensors s0..s9 have trained scaling."""
    scaling = {f"s{i}": {"mean": [0.1 * i], "std": [1.0 + 0.1 * i]} for i in range(10)}
    return make_artifact(models_dir, ["temp"], [16], sensors_scaling=scaling)


@pytest.fixture(scope="session")
def artifact_3f(models_dir) -> Path:
    """Three features, two stacked LSTM layers."""
    return make_artifact(models_dir, ["temp", "rpm", "vib"], [12, 8])


@pytest.fixture(scope="session")
def kafka_broker():
    """A Kafka-protocol broker for the whole session (embedded tansu, or SLOTWATCH_TEST_BOOTSTRAP)."""
    from tests.broker import start_test_broker

    broker, stop = start_test_broker()
    yield broker
    stop()


@pytest.fixture(scope="session")
def artifact_1f_b(models_dir) -> Path:
    """"Model B": artifact_1f retrained (same data and size, other initial weights, another version);
    per-sensor scaling for s0..s9: artifact_1f's for the odd ones, its own for the even ones."""
    scaling = {f"s{i}": ({"mean": [0.05 * i], "std": [1.0 + 0.2 * i]} if i % 2 == 0 else {"mean": [0.1 * i], "std": [1.0 + 0.1 * i]})
               for i in range(10)}
    return make_artifact(models_dir, ["temp"], [16], seed=3, data_seed=7, version="test-temp-16-b", sensors_scaling=scaling)


#: the worker's Kafka clients (SLOTWATCH_KAFKA__CLIENT); the confluent one when the package is there
KAFKA_CLIENTS = ["kafka-python", pytest.param("confluent", marks=pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("confluent_kafka") is None, reason="confluent-kafka not installed"))]


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request, monkeypatch) -> str:
    """Runs a test once per Kafka client of the worker: sets SLOTWATCH_KAFKA__CLIENT in the
    environment, which the worker's settings (in-process and in a subprocess: tests.worker_helpers.worker_env
    copies os.environ) take up."""
    monkeypatch.setenv("SLOTWATCH_KAFKA__CLIENT", request.param)
    return request.param
