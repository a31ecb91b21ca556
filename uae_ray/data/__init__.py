"""The curated data folder (``../shared/data``: cases, labels, landmarks, the patient of each case)
and synthetic warps of its scans: shared by training and benchmarking, which import this and
not each other."""
