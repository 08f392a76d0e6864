import sys; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
from worker.core.scorer import normal_sf
from benchmarks import skab
cap = jh.load("/work/joint-data/skab-max.pkl")
d = np.load("/work/joint-data/base.npz")
U, FL, W = d["U"], d["FL"], d["W"]
R, T, F = U.shape
names = cap["names"]; idx = cap["index"]
lab = np.zeros((R, T), bool); valid = np.zeros((R, T), bool)
for n in names:
    r = idx[n]; L = len(cap["labels"][n]); lab[r, :L] = cap["labels"][n] > 0; valid[r, :L] = True
tr = valid & ~W & ~lab; tr[:, 400:] = False
te = valid.copy(); te[:, :400] = False
print("train normal readings", tr.sum())
Ut = U[tr]
S = Ut.T @ Ut / len(Ut)
print("sd", np.sqrt(np.diag(S)).round(2))
C = S / np.sqrt(np.outer(np.diag(S), np.diag(S)))
np.set_printoptions(linewidth=200, precision=2, suppress=True)
print(C)
Si = np.linalg.inv(S + 1e-6 * np.eye(F))
t2 = np.einsum("rtf,fg,rtg->rt", U, Si, U)
thr = cap["params"].threshold
q_at = jh.wh_q(7.034, F)  # z for 1e-12
qs = np.quantile(t2[tr], 1 - 1e-4)
print("T2 q(1-1e-4) train", qs, "q_at", q_at, "scale", np.sqrt(qs / q_at))
def m_of(flag):
    res = {n: {"flag": flag[idx[n], :len(cap["labels"][n])]} for n in names}
    import pandas as pd
    exps = {n: pd.DataFrame({"label": cap["labels"][n]}) for n in names}
    l, f = skab.pooled_test_readings(exps, res)
    return skab.pooled_metrics(l, f), skab.per_group(exps, res), skab.per_file(exps, res)
m, g, pf = m_of(FL); print(jh.line("base", m, g))
# T2 alone and union (no feedback) at several cutoffs on T2 quantiles
for k in (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2):
    cut = qs * k
    j = (t2 > cut) & ~W
    m1, g1, _ = m_of(j)
    m2, g2, _ = m_of(FL | j)
    print(f"cut x{k}: joint alone F1 {m1['f1']:.3f} FAR {m1['far']} | union", jh.line("", m2, g2))
# which files: T2 in anomaly vs normal test readings
for n in names:
    r = idx[n]; L = len(cap["labels"][n]); ll = lab[r, 400:L]; tt = t2[r, 400:L]
    print(f"{n:10s} T2 med anomaly {np.median(tt[ll]) if ll.any() else 0:8.1f} normal {np.median(tt[~ll]) if (~ll).any() else 0:8.1f}  frac>cut anom {np.mean(tt[ll] > qs) if ll.any() else 0:.2f} norm {np.mean(tt[~ll] > qs):.2f}  base F1 {pf[n]['f1']:.2f} far {pf[n]['far']:.1f}")
