"""Issue 16 acceptance: the benchmark JSONs before (e638bdf) and after the restructuring agree in
every figure except timings. Usage: python compare.py (from this folder)."""
import json
import sys

TIMING = ("second", "_s", "s_per_", "stages", "machine", "data_dir")


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return round(x, 9) if isinstance(x, float) else x


ok = True
for kind in ("acc", "reg"):
    old, new = (json.dumps(strip(json.load(open(f"cmp16_{kind}_{side}.json"))), sort_keys=True) for side in ("old", "new"))  # NaN == NaN as text
    print(f"{kind}: {'identical' if old == new else 'DIFFERENT'} apart from timings ({len(new)} chars compared)")
    ok &= old == new
sys.exit(0 if ok else 1)
