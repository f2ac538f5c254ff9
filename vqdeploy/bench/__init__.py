"""``vqdeploy bench``: per-stage latency and tokens/s of every backend next to the reference sampler, in one run."""
