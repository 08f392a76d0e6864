"""Capture the scoring inputs of a SKAB fleet replay (production core) once, to re-score variants offline."""
import pickle, sys, numpy as np
from pathlib import Path
from benchmarks import skab
from worker.core.detector import SlotDetector
from worker.core import tick
model, out = Path(sys.argv[1]), sys.argv[2]
normal, exps = skab.load(skab.default_path())
rec, fzs = [], []
orig_fe = tick.feature_errors
def fe(*a):
    r = orig_fe(*a); fzs.append(r); return r
orig = SlotDetector._score_rows
def hook(self, rows, x, xs, err, count, warm_n, prev):
    rec.append((rows.copy(), np.array(x, np.float64), np.array(xs, np.float64), err.copy(), count.copy(), warm_n.copy(), np.array(prev, np.float32), fzs[-1].copy()))
    return orig(self, rows, x, xs, err, count, warm_n, prev)
SlotDetector._score_rows = hook; tick.feature_errors = fe
det = skab.make_detector(model)
res = skab.replay_together(det, exps)
lab, flg = skab.pooled_test_readings(exps, res)
print(skab.pooled_metrics(lab, flg))
index = dict(det.table.index)
pickle.dump(dict(rec=rec, index=index, names=list(exps), labels={n: exps[n]["label"].to_numpy() for n in exps},
                 flags={n: res[n]["flag"] for n in exps}, params=det.params, adapt=det.adapt, level_on=det._level_on,
                 flat_on=det._flat_on, F=det.n_features), open(out, "wb"))
