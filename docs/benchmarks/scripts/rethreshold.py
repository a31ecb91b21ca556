"""Abstention figures of a bench-accuracy JSON under another fixed-point found rule (consistency
threshold), from the per-point consistency it stores (same run, same points)."""
import json, sys
import numpy as np

def figures(path, thr, score=0.0):
    d = json.load(open(path))
    inv, outv, errs, found_in, found_out = [], [], [], [], []
    for p in d["abstention"]["pairs"]:
        fp = p["fixed-point"]
        for iv, ins, e, s, c in zip(p["in_view"], fp["inside"], fp["errors_mm"], fp["scores"], fp["consistency"]):
            f = bool(ins) and c >= thr and s >= score
            (found_in if iv else found_out).append(f)
            if f and iv:
                errs.append(e)
    errs = np.array(errs)
    d_found = []
    for p in d["head_neck"]["pairs"]:
        fp = p["fixed-point"]
        d_found += [c >= thr for c in fp.get("consistency", [])]
    return {"rule": thr, "in_view_found_pct": 100 * np.mean(found_in), "out_of_view_found_pct": 100 * np.mean(found_out),
            "found_within_10mm_pct": 100 * np.mean(errs <= 10), "found_within_20mm_pct": 100 * np.mean(errs <= 20),
            "n_found": int(len(errs)), "d_found_pct": 100 * np.mean(d_found) if d_found else None}

for thr in map(float, sys.argv[2:]):
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in figures(sys.argv[1], thr).items()}))
