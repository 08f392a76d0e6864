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
def m_of(flag):
    res = {n: {"flag": flag[idx[n], :len(cap["labels"][n])]} for n in names}
    l, f = skab.pooled_test_readings(exps, res)
    return skab.pooled_metrics(l, f), skab.per_group(exps, res), skab.per_file(exps, res)
thr = 1e-12
for nm, t in (("error", ET), ("level", LT), ("flat", FT)):
    m, g, _ = m_of((t <= thr) & ~W); print(nm, "alone (in base run):", jh.line("", m, g), "TP", m["tp"], "FP", m["fp"])
m, g, _ = m_of(FL); print("all", jh.line("", m, g), "TP", m["tp"], "FP", m["fp"])
# flags from within-episode continuation? none (hold=1). Flags only where some tail <= thr.
lab = np.zeros((R, T), bool); valid = np.zeros((R, T), bool); post = np.zeros((R, T), bool); pre = np.zeros((R, T), bool)
for n in names:
    r = idx[n]; L = len(cap["labels"][n]); l = cap["labels"][n] > 0; lab[r, :L] = l; valid[r, :L] = True
    a = np.flatnonzero(l); post[r, a[-1]+1:L] = True; pre[r, 400:a[0]] = True
for nm, t in (("error", ET), ("level", LT), ("all", None)):
    f = FL if t is None else (t <= thr) & ~W
    print(nm, "FP pre", (f & pre).sum(), "of", pre.sum(), " FP post", (f & post).sum(), "of", post.sum())
print("per file: FP pre/post by error-only (not level), level-only, both")
for n in names:
    r = idx[n]
    e = (ET[r] <= thr) & ~W[r]; l = (LT[r] <= thr) & ~W[r]
    print(f"{n:10s} pre {pre[r].sum():4d}: err {(e&pre[r]).sum():4d} lvl {(l&pre[r]).sum():4d} | post {post[r].sum():4d}: err {(e&post[r]).sum():4d} lvl {(l&post[r]).sum():4d} both {(e&l&post[r]).sum():4d}| anom {lab[r].sum()}: err {(e&lab[r]).sum()} lvl {(l&lab[r]).sum()} any {(FL[r]&lab[r]).sum()}")
