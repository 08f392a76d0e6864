import sys, json; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
cap = jh.load(sys.argv[1]); cal = json.load(open(sys.argv[2]))
R = len(cap["index"]); T = max(len(v) for v in cap["labels"].values())
pre = np.zeros((R, T), bool); post = np.zeros((R, T), bool)
for n in cap["names"]:
    r = cap["index"][n]; l = cap["labels"][n] > 0; a = np.flatnonzero(l); L = len(l)
    post[r, a[-1] + 1:L] = True; pre[r, 400:a[0]] = True
for e in (8, 6):
    fl, _, _ = jh.rescore(cap, jh.make(), threshold=1 - 10.0 ** -e)
    m, g, _ = jh.metrics(cap, fl); print(jh.line(f"base thr 1-1e-{e}", m, g))
for e in (12, 14, 16):
    for mult in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4):
        J = jh.OnlineJoint(np.array(cal["online"]["S"]), cal["online"]["scale"] * mult)
        fl, _, _ = jh.rescore(cap, jh.make(J), extra_state=J.state, threshold=1 - 10.0 ** -e)
        m, g, _ = jh.metrics(cap, fl); print(jh.line(f"online x{mult} thr 1-1e-{e}", m, g), "FP pre", (fl & pre).sum(), "post", (fl & post).sum())
