import sys, json; sys.path.insert(0, "/work/joint-data")
import numpy as np, pandas as pd
from benchmarks import skab
from training.fleet import prepare_fleet
from training.train import TrainConfig
from worker.core import artifact as art
import calib
a = art.load(sys.argv[1])
normal, exps = skab.load(skab.default_path()); cfg = TrainConfig()
frames = skab.split_normal(normal) + [e.iloc[:skab.TRAIN_READINGS] for e in exps.values()]
fleet = prepare_fleet(pd.concat(frames, ignore_index=True), skab.FEATURES, val_fraction=cfg.val_fraction, min_readings=cfg.min_readings)
out = {}
for kind in ("fleet", "online"):
    S, scale = calib.calibrate(a, fleet, kind)
    out[kind] = {"S": S.tolist(), "scale": scale}
json.dump(out, open(sys.argv[2], "w"))
