"""Compares two big-ann ground-truth files: ids that differ, ties aside."""
import sys
import numpy as np

def read(path):
    n, k = np.fromfile(path, dtype=np.uint32, count=2)
    ids = np.fromfile(path, dtype=np.int32, offset=8, count=n * k).reshape(n, k)
    d = np.fromfile(path, dtype=np.float32, offset=8 + 4 * n * k, count=n * k).reshape(n, k)
    return ids, d

a_ids, a_d = read(sys.argv[1])
b_ids, b_d = read(sys.argv[2])
assert a_ids.shape == b_ids.shape, (a_ids.shape, b_ids.shape)
diff = a_ids != b_ids
# a differing slot is a tie if the two distances at that rank are equal (within 1e-6 rel.)
tie = np.isclose(a_d, b_d, rtol=1e-6, atol=1e-6)
real = diff & ~tie
sets_equal = sum(set(a_ids[i]) == set(b_ids[i]) for i in range(len(a_ids)))
print(f"{diff.sum()} id slots differ, {real.sum()} of them not ties; "
      f"{sets_equal}/{len(a_ids)} queries with identical id sets; max |dist diff| {np.abs(a_d - b_d).max():.4g}")
sys.exit(1 if real.sum() else 0)
