import sys; sys.path.insert(0, "/work/joint-data")
import jh
cap = jh.load("/work/joint-data/skab-max.pkl")
for e in (14, 13, 12, 11, 10, 9, 8):
    fl, _, _ = jh.rescore(cap, jh.make(), threshold=1 - 10.0 ** -e)
    m, g, _ = jh.metrics(cap, fl); print(jh.line(f"thr 1-1e-{e}", m, g))
