import sys; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
cap = jh.load("/work/joint-data/skab-max.pkl")
rec = []
fl, ta, rpt = jh.rescore(cap, jh.make(record=rec))
m, g, pf = jh.metrics(cap, fl)
print(jh.line("baseline rescore", m, g))
import pickle
# arrange u etc per (row, t)
R = len(cap["index"]); T = fl.shape[1]; F = cap["F"]
U = np.zeros((R, T, F)); ET = np.ones((R, T)); LT = np.ones((R, T)); FT = np.ones((R, T)); W = np.zeros((R, T), bool); IE = np.zeros((R, T), bool)
for (rows, pos), r in zip(rpt, rec):
    U[rows, pos] = r["u"]; ET[rows, pos] = r["err_tail"]; LT[rows, pos] = r["lvl_tail"]; FT[rows, pos] = r["flat_tail"]; W[rows, pos] = r["warming"]; IE[rows, pos] = r["in_ep"]
np.savez("/work/joint-data/base.npz", U=U, ET=ET, LT=LT, FT=FT, W=W, IE=IE, FL=fl)
