"""CPM@10 / MED of a bench-tracking JSON restricted to some cases (from its per-case errors)."""
import json, sys
import numpy as np
d = json.load(open(sys.argv[1])); cases = set(open(sys.argv[2]).read().split())
for m in d["methods"] if isinstance(d["methods"], list) else d["methods"]:
    errs = np.concatenate([np.asarray(c[m]["errors_mm"]) for c in d["per_case"] if c["case"] in cases and m in c]) \
        if any(c["case"] in cases for c in d["per_case"]) else np.array([])
    print(f"{m:20s} n={len(errs)} cpm10={100*np.mean(errs<=10):.2f}% med={errs.mean():.2f} mm median={np.median(errs):.2f}")
