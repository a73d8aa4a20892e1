"""ProxylessNAS search on the latbench space.

``python -m search.run --predictor lut.pkl`` trains a supernet of mixed ops (path-binarized, so
only the sampled path runs), updates the architecture parameters by the binary-gate gradient or
by REINFORCE with the predictor's latency in the objective, and writes the derived architecture.
"""
