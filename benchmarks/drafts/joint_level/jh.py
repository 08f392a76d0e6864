"""Offline SKAB re-scoring harness with a joint-level (Hotelling T^2) channel variant of adaptive.score_tick."""
import pickle, numpy as np
from worker.core import adaptive
from worker.core.adaptive import level_step, level_tail, level_learn, movement_step, episode_step, LEVEL_VAR_FLOOR
from worker.core.scorer import long_alpha, score_step, normal_sf
from benchmarks import skab

def wh_z(q, k):
    """Wilson-Hilferty: chi-square(k) value q -> standard normal z."""
    c = 2.0 / (9.0 * k)
    return (np.cbrt(np.maximum(q, 0.0) / k) - (1.0 - c)) / np.sqrt(c)

def wh_q(z, k):
    c = 2.0 / (9.0 * k)
    return k * (z * np.sqrt(c) + 1.0 - c) ** 3

def signed_dev(lvl, lm, lv):
    return (lvl - lm) / np.sqrt(np.maximum(lv, LEVEL_VAR_FLOOR))

def make(joint=None, record=None):
    """joint: None or object with .t2(u, st) -> T^2 (n,), .scale, .on, optional .learn(st, u, learn, alpha, first) -> dict, .accept(...)"""
    def fn(p, a, st, err, xs, x32, prev32, count, warm_n, level_on, flat_on, threshold=None):
        thr = p.threshold if threshold is None else threshold
        em0, ev0 = st["err_mean"], st["err_var"]
        alpha = long_alpha(p.warmup, count, p.long_window)
        score, anom, warming, em, ev, es, tail = score_step(p, err, count, warm_n, em0, ev0, st["err_short"], thr, with_tail=True, alpha=alpha)
        first = count == 0
        lm, lv = st["lvl_mean"], st["lvl_var"]
        if first.any():
            lm = np.where(first[:, None], 0.0, lm); lv = np.where(first[:, None], 1.0, lv)
            em0 = np.where(first, p.prior_mean, em0); ev0 = np.where(first, p.prior_var, ev0)
        lvl, z_lvl = level_step(a, xs, first, st["lvl"], lm, lv, unseen=warm_n > p.warmup)
        base_lvl_tail = level_tail(z_lvl, xs.shape[-1])
        err_tail = tail
        if level_on:
            tail = np.minimum(tail, base_lvl_tail)
        u = signed_dev(lvl, lm, lv)
        jt = np.ones(len(err))
        if joint is not None:
            t2 = joint.t2(u, st, first)
            jt = normal_sf(wh_z(t2 / joint.scale ** 2, xs.shape[-1]))
            if joint.on:
                tail = np.minimum(tail, jt)
        rate, run, flat_tail = movement_step(a, x32, prev32, ~first, count, st["move_rate"], st["still_run"])
        if flat_on:
            tail = np.minimum(tail, flat_tail)
        score = 1.0 - tail
        anom = (~warming) & (score >= thr)
        in_episode = st["adapt_len"] > 0
        learn = ~(anom | in_episode)
        em = np.where(learn, em, em0); ev = np.where(learn, ev, ev0)
        lm2, lv2 = level_learn(alpha, learn, lvl, lm, lv)
        n_, q_, epm, epv, acc = episode_step(a, anom, err, st["adapt_len"], st["adapt_quiet"], st["adapt_err_mean"], st["adapt_err_var"])
        extra = {}
        if joint is not None and hasattr(joint, "learn"):
            extra = joint.learn(st, u, learn, alpha, first, acc)
        if acc.any():
            em = np.where(acc, epm, em); ev = np.where(acc, np.maximum(ev, epv), ev)
            lm2 = np.where(acc[:, None], lvl, lm2)
            still = acc[:, None] & (run >= max(a.flat_min_run, 1))
            rate = np.where(still, 1.0 / (run + 2.0), rate)
            epm, epv = np.where(acc, 0.0, epm), np.where(acc, 0.0, epv)
        new = {"err_mean": em, "err_var": ev, "err_short": es, "lvl": lvl, "lvl_mean": lm2, "lvl_var": lv2, "move_rate": rate,
               "still_run": run, "adapt_len": n_, "adapt_quiet": q_, "adapt_err_mean": epm, "adapt_err_var": epv, **extra}
        if record is not None:
            record.append(dict(u=u, err_tail=err_tail, lvl_tail=base_lvl_tail, flat_tail=flat_tail, joint_tail=jt, warming=warming, anom=anom, in_ep=in_episode))
        return score, anom, warming, tail, acc, new
    return fn

def rescore(cap, score_fn, extra_state=None, threshold=None):
    a = cap["adapt"]; p = cap["params"]; F = cap["F"]; R = len(cap["index"])
    st = adaptive.fresh_state(R, F)
    if extra_state: st.update(extra_state(R, F))
    T = max(len(v) for v in cap["labels"].values())
    flags = np.zeros((R, T), bool); tails = np.ones((R, T)); pos = np.zeros(R, np.int64)
    rows_per_tick = []
    for rows, x, xs, err, count, warm, prev, fz in cap["rec"]:
        sub = {k: v[rows] for k, v in st.items()}
        first = count == 0
        if first.any():
            fr = adaptive.fresh_state(int(first.sum()), F)
            if extra_state: fr.update(extra_state(int(first.sum()), F))
            for k in sub: sub[k][first] = fr[k]
        score, anom, warming, tail, acc, new = score_fn(p, a, sub, err, xs, x.astype(np.float32), prev, count, warm,
                                                        cap["level_on"], cap["flat_on"], threshold)
        for k, v in new.items():
            st[k][rows] = v
        flags[rows, pos[rows]] = anom; tails[rows, pos[rows]] = tail
        rows_per_tick.append((rows, pos[rows].copy()))
        pos[rows] += 1
    return flags, tails, rows_per_tick

def metrics(cap, flags):
    out = {}
    res = {n: {"flag": flags[cap["index"][n], :len(cap["labels"][n])]} for n in cap["names"]}
    class E:  # minimal exps stand-in
        pass
    import pandas as pd
    exps = {n: pd.DataFrame({"label": cap["labels"][n]}) for n in cap["names"]}
    lab, flg = skab.pooled_test_readings(exps, res)
    m = skab.pooled_metrics(lab, flg)
    g = skab.per_group(exps, res)
    return m, g, skab.per_file(exps, res)

def line(name, m, g):
    return (f"{name}: F1 {m['f1']:.3f} FAR {m['far']:.2f} MAR {m['mar']:.2f} | " +
            " ".join(f"{k} {v['f1']:.3f}/{v['far']:.1f}" for k, v in g.items()))

def load(path):
    return pickle.load(open(path, "rb"))

class FleetJoint:
    """T^2 of u against one fleet covariance (from calibration)."""
    def __init__(self, S, scale=1.0, on=True):
        self.S = np.asarray(S); self.Si = np.linalg.inv(self.S); self.scale = scale; self.on = on
    def t2(self, u, st, first):
        return np.einsum("nf,fg,ng->n", u, self.Si, u)

class OnlineJoint:
    """T^2 of u against the sensor's own EWMA second moment of u (prior: the fleet's, weight warmup), frozen while flagged."""
    def __init__(self, S, scale=1.0, on=True, shrink=0.0):
        self.S = np.asarray(S); self.scale = scale; self.on = on; self.shrink = shrink
        self.warmup, self.window = 96, 1000
    def state(self, n, F):
        return {"jcov": np.tile(self.S, (n, 1, 1))}
    def t2(self, u, st, first):
        C = st["jcov"]
        if first.any():
            C = np.where(first[:, None, None], self.S, C)
        if self.shrink:
            C = (1 - self.shrink) * C + self.shrink * self.S
        return np.einsum("nf,nf->n", u, np.linalg.solve(C, u[..., None])[..., 0])
    def learn(self, st, u, learn, alpha, first, acc):
        C = st["jcov"]
        if first.any():
            C = np.where(first[:, None, None], self.S, C)
        al = alpha[:, None, None]
        C2 = (1 - al) * C + al * np.einsum("nf,ng->nfg", u, u)
        return {"jcov": np.where(learn[:, None, None], C2, C)}

def run_pass(p, a, err, xs, raw, valid, joint=None):
    """A whole-sequence pass as training.calibrate.run_adaptive does, with the joint variant; returns (u, warming, flag, t2)."""
    s_, t_ = err.shape; f_ = xs.shape[-1]
    st = adaptive.fresh_state(s_, f_)
    if joint is not None and hasattr(joint, "state"): st.update(joint.state(s_, f_))
    count = np.zeros(s_, np.int64); warm = np.full(s_, p.warmup)
    raw32 = raw.astype(np.float32); prev = np.zeros((s_, f_), np.float32)
    U = np.zeros((s_, t_, f_)); Wm = np.zeros((s_, t_), bool); Fl = np.zeros((s_, t_), bool); T2 = np.zeros((s_, t_))
    for t in range(t_):
        live = valid[:, t]
        rec = []
        fn = make(joint, rec)
        sc, an, wu, ta, acc, new = fn(p, a, st, err[:, t], xs[:, t].astype(np.float64), raw32[:, t], prev, count, warm, True, a.flat_min_run > 0)
        U[:, t] = rec[0]["u"]; Wm[:, t] = wu; Fl[:, t] = an & live
        if joint is not None:
            T2[:, t] = joint.t2(rec[0]["u"], st, count == 0)
        for k, v in new.items():
            lv = live.reshape((-1,) + (1,) * (v.ndim - 1))
            st[k] = np.where(lv, v, st[k])
        prev = np.where(live[:, None], raw32[:, t], prev); count = count + live
    return U, Wm, Fl, T2
