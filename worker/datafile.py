"""Reading files (CSV or Parquet): the one place that knows their format.

Columns: ``sensor_id``, ``ts`` (ISO-8601 or epoch milliseconds), one column per feature,
and optionally ``label`` (1 = inside an anomaly window) and ``anomaly_kind`` (what the
simulator injected there; kept for per-kind evaluation).  Used by ``slotwatch replay``,
``train``, ``evaluate`` and ``simulate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from worker.core.readings import Reading

RESERVED = ("sensor_id", "ts", "label", "anomaly_kind")


class DataFileError(ValueError):
    """The file cannot be used; the message says why."""


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: no such file")
    suffix = "".join(p.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            df = pd.read_parquet(p)
        elif suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
            df = pd.read_csv(p, dtype={"sensor_id": str})
        else:
            raise DataFileError(f"{p}: unknown format (use .csv, .csv.gz or .parquet)")
    except DataFileError:
        raise
    except Exception as e:
        raise DataFileError(f"{p}: cannot be read: {e}") from None
    return df


def ts_to_ms(col: pd.Series) -> np.ndarray:
    """Epoch ms from a column of epoch ms numbers, ISO strings or datetimes."""
    if pd.api.types.is_datetime64_any_dtype(col):
        c = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
        return (c.astype("datetime64[ns, UTC]").astype("int64") // 1_000_000).to_numpy()
    if pd.api.types.is_numeric_dtype(col):
        if col.isna().any():
            raise DataFileError("column ts has empty values")
        return col.to_numpy().astype(np.int64)
    parsed = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        bad = col[parsed.isna()].iloc[0]
        raise DataFileError(f"column ts has an unparsable time: {bad!r}")
    return (parsed.astype("int64") // 1_000_000).to_numpy()


def load_readings(path: str | Path, features: list[str] | None = None, *, sort: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """A checked frame with ``ts_ms`` and the feature columns; features default to all non-reserved columns.

    With ``sort`` the rows are put in time order (stable, so ties keep file order).
    """
    df = read_table(path)
    if len(df) == 0:
        raise DataFileError(f"{path}: no rows")
    if "sensor_id" not in df.columns or "ts" not in df.columns:
        raise DataFileError(f"{path}: needs columns sensor_id and ts, has {list(df.columns)}")
    if features is None:
        features = [c for c in df.columns if c not in RESERVED and c != "ts_ms"]
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise DataFileError(f"{path}: no column for feature(s) {missing}; columns are {list(df.columns)}")
    if not features:
        raise DataFileError(f"{path}: no feature columns besides {RESERVED}")
    if df["sensor_id"].isna().any():
        raise DataFileError(f"{path}: {int(df['sensor_id'].isna().sum())} rows have no sensor_id")
    out = pd.DataFrame({"sensor_id": df["sensor_id"].astype(str), "ts_ms": ts_to_ms(df["ts"])})
    for f in features:
        col = pd.to_numeric(df[f], errors="coerce")
        bad = col.isna() & df[f].notna()
        if bad.any():
            raise DataFileError(f"{path}: feature {f!r} has a non-numeric value: {df[f][bad].iloc[0]!r}")
        out[f] = col.astype(np.float64)  # empty cells stay NaN; callers decide (replay rejects, train refuses)
    if "label" in df.columns:
        out["label"] = pd.to_numeric(df["label"], errors="coerce").fillna(0).astype(np.int8)
    if "anomaly_kind" in df.columns:
        out["anomaly_kind"] = df["anomaly_kind"].fillna("").astype(str).to_numpy()
    if sort:
        out = out.sort_values("ts_ms", kind="stable").reset_index(drop=True)
    return out, list(features)


def iter_readings(df: pd.DataFrame, features: list[str]):
    """Readings from a frame made by :func:`load_readings`, in row order."""
    ids = df["sensor_id"].to_numpy()
    ts = df["ts_ms"].to_numpy()
    vals = df[features].to_numpy(dtype=np.float64)
    labels = df["label"].to_numpy() if "label" in df.columns else None
    for i in range(len(df)):
        yield Reading(ids[i], int(ts[i]), vals[i], label=None if labels is None else int(labels[i]), offset=i)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(p, index=False)
    else:
        df.to_csv(p, index=False)
    return p
