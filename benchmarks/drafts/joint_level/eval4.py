"""Which channel's tail crossed the threshold at each flagged reading (default, and joint online x0.5)."""
import sys, json; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
cap = jh.load("/work/joint-data/skab-max.pkl"); cal = json.load(open("/work/joint-data/skab-joint-cal.json"))
R = len(cap["index"]); T = max(len(v) for v in cap["labels"].values())
lab = np.zeros((R, T), bool); pre = np.zeros((R, T), bool); post = np.zeros((R, T), bool)
for n in cap["names"]:
    r = cap["index"][n]; l = cap["labels"][n] > 0; a = np.flatnonzero(l); L = len(l)
    lab[r, :L] = l; post[r, a[-1] + 1:L] = True; pre[r, 400:a[0]] = True
lab[:, :400] = False
for name, J in (("default", None), ("joint online x0.5", jh.OnlineJoint(np.array(cal["online"]["S"]), cal["online"]["scale"] * 0.5))):
    rec = []
    fl, _, rpt = jh.rescore(cap, jh.make(J, rec), extra_state=getattr(J, "state", None))
    E = np.zeros((R, T), bool); Lv = np.zeros((R, T), bool); Jt = np.zeros((R, T), bool)
    for (rows, pos), r in zip(rpt, rec):
        E[rows, pos] = r["err_tail"] <= 1e-12; Lv[rows, pos] = r["lvl_tail"] <= 1e-12; Jt[rows, pos] = r["joint_tail"] <= 1e-12
    for cn, c in (("error", E), ("level", Lv), ("joint", Jt), ("error only", E & ~Lv & ~Jt), ("level or joint", Lv | Jt)):
        f = fl & c
        print(f"{name:18s} {cn:15s} TP {int((f & lab).sum()):5d}  FP pre {int((f & pre).sum()):4d} post {int((f & post).sum()):4d}")
