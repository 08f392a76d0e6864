import sys, json; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
cap = jh.load("/work/joint-data/skab-max.pkl"); cal = json.load(open("/work/joint-data/skab-joint-cal.json"))
fl0, _, _ = jh.rescore(cap, jh.make()); _, _, pf0 = jh.metrics(cap, fl0)
res = {}
for kind, mult in (("fleet", 1.0), ("online", 1.0), ("online", 0.5)):
    J = (jh.FleetJoint if kind == "fleet" else jh.OnlineJoint)(np.array(cal[kind]["S"]), cal[kind]["scale"] * mult)
    fl, _, _ = jh.rescore(cap, jh.make(J), extra_state=getattr(J, "state", None))
    m, g, pf = jh.metrics(cap, fl)
    res[f"{kind} x{mult}"] = {"metrics": {k: m[k] for k in ("f1", "far", "mar", "tp", "fp", "fn", "tn")}, "groups": g, "per_file": pf}
    print(kind, mult, " ".join(f"{n} {pf0[n]['f1']:.2f}->{pf[n]['f1']:.2f}" for n in ("valve1-1", "valve1-3", "valve1-4", "other-4", "other-13")))
    print("   largest FAR changes:", sorted(((round(pf[n]["far"] - pf0[n]["far"], 1), n) for n in pf), reverse=True)[:6])
res["default"] = {"per_file": pf0}
json.dump({"skab_calibration": {k: {"scale": v["scale"]} for k, v in cal.items()}, "skab_fleet_cov": cal["fleet"]["S"], "rescored": res},
          open("/work/joint-data/skab-joint-results.json", "w"), indent=1)
