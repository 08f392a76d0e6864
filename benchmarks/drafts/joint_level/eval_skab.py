import sys, json; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
cap = jh.load(sys.argv[1]); cal = json.load(open(sys.argv[2]))
for e in (12, 11, 10, 9):
    thr = 1 - 10.0 ** -e
    fl, _, _ = jh.rescore(cap, jh.make(), threshold=thr)
    m, g, _ = jh.metrics(cap, fl); print(jh.line(f"base         thr 1-1e-{e}", m, g))
    for kind in ("fleet", "online"):
        for mult in (1.0, 0.5):
            J = (jh.FleetJoint if kind == "fleet" else jh.OnlineJoint)(np.array(cal[kind]["S"]), cal[kind]["scale"] * mult)
            es = J.state if hasattr(J, "state") else None
            fl, _, _ = jh.rescore(cap, jh.make(J), extra_state=es, threshold=thr)
            m, g, _ = jh.metrics(cap, fl); print(jh.line(f"joint {kind:6s} x{mult} thr 1-1e-{e}", m, g))
