"""Level statistic alone, no feedback: per-feature max (today's, scales from the artifact) vs joint T^2 (fleet cov), each swept."""
import sys; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
from benchmarks import skab
import pandas as pd
cap = jh.load("/work/joint-data/skab-max.pkl")
d = np.load("/work/joint-data/base.npz")
U, FL, W, IE, ET, LT, FT = d["U"], d["FL"], d["W"], d["IE"], d["ET"], d["LT"], d["FT"]
R, T, F = U.shape
names = cap["names"]; idx = cap["index"]
exps = {n: pd.DataFrame({"label": cap["labels"][n]}) for n in names}
lab = np.zeros((R, T), bool); valid = np.zeros((R, T), bool)
for n in names:
    r = idx[n]; L = len(cap["labels"][n]); lab[r, :L] = cap["labels"][n] > 0; valid[r, :L] = True
tr = valid & ~W & ~lab; tr[:, 400:] = False
def m_of(flag):
    res = {n: {"flag": flag[idx[n], :len(cap["labels"][n])]} for n in names}
    l, f = skab.pooled_test_readings(exps, res)
    return skab.pooled_metrics(l, f)
sc = np.array(cap["adapt"].level_scales)
zmax = (np.abs(U) / sc).max(-1)
Ut = U[tr]; S = Ut.T @ Ut / len(Ut); t2 = np.einsum("rtf,fg,rtg->rt", U, np.linalg.inv(S), U)
Sd = np.diag(np.diag(S)); chi = np.einsum("rtf,fg,rtg->rt", U, np.linalg.inv(Sd), U)
for name, s in (("max|u|/scale", zmax), ("T2 fleet cov", t2), ("sum u^2/var (diag)", chi)):
    out = []
    for q in (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95):
        # cut at quantile of test distribution to compare at equal flag rates
        cut = np.quantile(s[valid & ~W], q)
        m = m_of((s > cut) & ~W); out.append(f"{m['f1']:.3f}@{m['far']:.1f}")
    print(f"{name:22s}", " ".join(out))
e = ET <= 1e-12
for name, s in (("err|max", zmax), ("err|T2", t2)):
    out = []
    for q in (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95):
        cut = np.quantile(s[valid & ~W], q)
        m = m_of(((s > cut) | e) & ~W); out.append(f"{m['f1']:.3f}@{m['far']:.1f}")
    print(f"{name:22s}", " ".join(out))
