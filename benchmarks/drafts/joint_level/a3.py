"""Per-sensor online covariance of the signed level deviations u (no feedback: base flags decide learning)."""
import sys; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
from benchmarks import skab
import pandas as pd
cap = jh.load("/work/joint-data/skab-max.pkl")
d = np.load("/work/joint-data/base.npz")
U, FL, W, IE = d["U"], d["FL"], d["W"], d["IE"]
R, T, F = U.shape
names = cap["names"]; idx = cap["index"]
lab = np.zeros((R, T), bool); valid = np.zeros((R, T), bool)
for n in names:
    r = idx[n]; L = len(cap["labels"][n]); lab[r, :L] = cap["labels"][n] > 0; valid[r, :L] = True
tr = valid & ~W & ~lab; tr[:, 400:] = False
Ut = U[tr]; S0 = Ut.T @ Ut / len(Ut)
exps = {n: pd.DataFrame({"label": cap["labels"][n]}) for n in names}
def m_of(flag):
    res = {n: {"flag": flag[idx[n], :len(cap["labels"][n])]} for n in names}
    l, f = skab.pooled_test_readings(exps, res)
    return skab.pooled_metrics(l, f), skab.per_group(exps, res), skab.per_file(exps, res)
learnmask = ~(FL | IE)
def online(prior, k0, W_, shrink=0.0, corr_only=False):
    t2 = np.zeros((R, T))
    C = np.tile(prior, (R, 1, 1)); cnt = np.zeros(R)
    for t in range(T):
        u = U[:, t]
        Cs = (1 - shrink) * C + shrink * np.diag(np.diagonal(C, axis1=1, axis2=2))[None] if False else C
        if shrink:
            Cs = (1 - shrink) * C + shrink * np.einsum("rf,fg->rfg", np.diagonal(C, axis1=1, axis2=2), np.eye(F))
        Ci = np.linalg.inv(Cs + 1e-6 * np.eye(F))
        t2[:, t] = np.einsum("rf,rfg,rg->r", u, Ci, u)
        lm = learnmask[:, t] & valid[:, t]
        al = np.maximum(1.0 / (k0 + cnt + 1), 1.0 / W_)[:, None, None]
        C2 = (1 - al) * C + al * np.einsum("rf,rg->rfg", u, u)
        C = np.where(lm[:, None, None], C2, C); cnt += valid[:, t]
    return t2
np.set_printoptions(linewidth=200, precision=2, suppress=True)
for label, prior, k0, W_, sh in (("fleet prior k0=96 W=1000", S0, 96, 1000, 0.0), ("fleet prior k0=96 W=1000 shrink .3", S0, 96, 1000, 0.3),
                                  ("identity prior k0=96", np.eye(F), 96, 1000, 0.0), ("fleet prior k0=400", S0, 400, 1000, 0.0),
                                  ("fleet prior k0=96 W=300", S0, 96, 300, 0.0)):
    t2 = online(prior, k0, W_, sh)
    qs = np.quantile(t2[tr], 1 - 1e-4)
    print(label, "train q", round(qs, 1), "q max", round(t2[tr].max(), 1))
    for k in (1.0, 0.6, 0.4, 0.3, 0.2):
        j = (t2 > qs * k) & ~W
        m1, g1, _ = m_of(j); m2, g2, pf = m_of(FL | j)
        print(f"   cut x{k}: alone F1 {m1['f1']:.3f} FAR {m1['far']} | union", jh.line("", m2, g2))
