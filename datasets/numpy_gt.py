"""NumPy/BLAS brute-force top-k, the reference timing for `fathom gt`."""
import sys, time
import numpy as np

def load(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    dt = np.float32 if path.endswith(".fbin") else (np.uint8 if path.endswith(".u8bin") else np.int8)
    return np.fromfile(path, dtype=dt, offset=8).reshape(n, d).astype(np.float32)

base, q, metric, k = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3], int(sys.argv[4])
t0 = time.time()
bn = (base * base).sum(1)
out = np.empty((len(q), k), dtype=np.int64)
for s in range(0, len(q), 1000):
    qb = q[s:s + 1000]
    dots = qb @ base.T
    dist = bn[None, :] - 2 * dots if metric == "l2" else -dots
    part = np.argpartition(dist, k, axis=1)[:, :k]
    order = np.take_along_axis(dist, part, 1).argsort(1)
    out[s:s + 1000] = np.take_along_axis(part, order, 1)
print(f"numpy/BLAS brute force: {time.time() - t0:.2f} s wall ({len(q)} queries x {len(base)} base, k={k})")
