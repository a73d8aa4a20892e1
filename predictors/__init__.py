"""Latency predictors: LUT (sum of measured op latencies), GBDT (xgboost on op features) and the arch-level
GBDT (xgboost on whole-network features, fitted on architecture tables; no per-layer latencies).

They share one API (scikit-learn style); the search uses the first two's per-layer tables::

    pred = LUTPredictor().fit("data/local-cpu/ops-tvm.parquet")
    pred.predict(arch)                 # ms
    pred.layer_latencies(space)        # [{candidate: ms}, ...] per searchable layer
    pred.fixed_latency(space)          # stem + feature mix + logits (+ calibration offset)
    save_predictor(pred, "lut.pkl"); load_predictor("lut.pkl")   # safe file: plain data only
"""
from predictors.arch_gbdt import ArchGBDTPredictor, WholeNetworkOnlyError
from predictors.base import BasePredictor, MissingOpError, NotFittedError
from predictors.gbdt import GBDTPredictor
from predictors.io import PredictorFileError, load_predictor, save_predictor
from predictors.lut import LUTPredictor

#: ``--kind`` names accepted by the CLI.
KINDS = {"lut": LUTPredictor, "xgb": GBDTPredictor, "gbdt": GBDTPredictor, "xgb-arch": ArchGBDTPredictor}

__all__ = ["ArchGBDTPredictor", "BasePredictor", "GBDTPredictor", "LUTPredictor", "KINDS", "MissingOpError",
           "NotFittedError", "PredictorFileError", "WholeNetworkOnlyError", "load_predictor", "save_predictor"]
