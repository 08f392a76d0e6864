import sys, json; sys.path.insert(0, "/work/joint-data"); sys.path.insert(0, "/work/drift-data/scripts")
import numpy as np, pickle
from dataclasses import replace
import jh, calib, harness
from recal import fleet_and_model
sc = json.load(open("/work/drift-data/q123/scales.json"))
a, fleet = fleet_and_model("/work/drift-data/q123")
out = {}
for kind in ("fleet", "online"):
    S, scale = calib.calibrate(a, fleet, kind, scales=sc["known"], unseen=sc["unseen"])
    out[kind] = {"S": S.tolist(), "scale": scale}
json.dump(out, open("/work/joint-data/sim-joint-cal.json", "w"))
for which in ("new", "later"):
    cap = pickle.load(open(f"/work/drift-data/q123/cap-{which}.pkl", "rb"))
    ad = replace(cap["adapt"], level_scales=tuple(sc["known"]), level_scales_unseen=tuple(sc["unseen"]))
    s, _, _ = harness.rescore(cap, jh.make(), adapt=ad); print(which, harness.line("base", s))
    for kind in ("fleet", "online"):
        for mult in (1.0, 0.5):
            J = (jh.FleetJoint if kind == "fleet" else jh.OnlineJoint)(np.array(out[kind]["S"]), out[kind]["scale"] * mult)
            es = None
            if kind == "online":
                def es(n, F, J=J): return J.state(n, F)
                def _end(st, er, J=J): st["jcov"][er] = J.S
                es.on_scaling_end = _end
            s, _, _ = harness.rescore(cap, jh.make(J), adapt=ad, extra_state=es); print(which, harness.line(f"joint {kind} x{mult}", s))
