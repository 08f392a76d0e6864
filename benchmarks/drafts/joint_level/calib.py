"""Calibrate the joint channel on a training fleet by the level channel's rule: covariance of u on the training part's
normal readings, scale so that it alone flags at most false_alarm_rate of normal held-out readings on a live pass."""
import sys, json; sys.path.insert(0, "/work/joint-data")
import jh, numpy as np
from dataclasses import replace
from training import calibrate as cal
from training.train import predict_sequences
from worker.core.adaptive import AdaptParams
from worker.core.scorer import ScorerParams

def setup(a, fleet, scales=None, unseen=None):
    c = a.manifest.calibration
    p = ScorerParams(c.threshold, c.warmup, c.short_window, c.long_window, c.error_mean, c.error_std ** 2)
    ad = AdaptParams(accept_after=600, level_window=c.level_window, level_scale=c.level_scale,
                     level_scales=tuple(scales or c.level_feature_scale), level_scales_unseen=tuple(unseen or c.level_feature_scale_unseen),
                     flat_min_run=4 if c.flat_window > 0 else 0)
    hb = a.model.get_layer("head").get_weights()[1].astype(np.float64)
    x = fleet.x.astype(np.float64); exp = cal.expected_values(predict_sequences(a.model, fleet.x), hb)
    err = cal.errors(x, exp, np.asarray(c.residual_std))
    return p, ad, x, err

def calibrate(a, fleet, kind="fleet", far=1e-4, passes=4, scales=None, unseen=None, log=print):
    p, ad, x, err = setup(a, fleet, scales, unseen)
    valid = fleet.valid(); F = x.shape[-1]
    held = cal.calibration_mask(fleet.normal, fleet.in_validation())
    train_m = cal.calibration_mask(fleet.normal, valid & ~fleet.in_validation())
    U, Wm, Fl, _ = jh.run_pass(p, ad, err, x, fleet.raw, valid)
    Ut = U[train_m & ~Wm]
    S = Ut.T @ Ut / len(Ut)
    q_at = jh.wh_q(cal.normal_isf(1.0 - p.threshold), F)
    J = (jh.FleetJoint if kind == "fleet" else jh.OnlineJoint)(S, 1.0)
    scale = None
    for i in range(passes):
        _, Wm, Fl, T2 = jh.run_pass(p, ad, err, x, fleet.raw, valid, J if i else replace_off(J))
        q = float(np.quantile(T2[held & ~Wm], 1.0 - far))
        new = np.sqrt(q / q_at)
        old = scale
        scale = new if scale is None else float(np.sqrt(scale * new))
        J.scale = scale
        log(f"  {kind} pass {i}: held-out readings {int((held & ~Wm).sum())}, T2 q {q:.1f}, scale {scale:.3f}")
        if old is not None and abs(scale / old - 1) < 0.01:
            break
    return S, scale

def replace_off(J):
    import copy
    j = copy.copy(J); j.on = False; return j
