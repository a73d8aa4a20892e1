"""Latency predictors: LUT (sum of measured op latencies) and GBDT (xgboost on op features).

Both share one API (scikit-learn style) used by the search::

    pred = LUTPredictor().fit("data/local-cpu/ops-tvm.parquet")
    pred.predict(arch)                 # ms
    pred.layer_latencies(space)        # [{candidate: ms}, ...] per searchable layer
    pred.fixed_latency(space)          # stem + feature mix + logits (+ calibration offset)
    save_predictor(pred, "lut.pkl"); load_predictor("lut.pkl")   # safe file: plain data only
"""
from predictors.base import BasePredictor, MissingOpError, NotFittedError
from predictors.gbdt import GBDTPredictor
from predictors.io import PredictorFileError, load_predictor, save_predictor
from predictors.lut import LUTPredictor

#: ``--kind`` names accepted by the CLI.
KINDS = {"lut": LUTPredictor, "xgb": GBDTPredictor, "gbdt": GBDTPredictor}

__all__ = ["BasePredictor", "GBDTPredictor", "LUTPredictor", "KINDS", "MissingOpError", "NotFittedError",
           "PredictorFileError", "load_predictor", "save_predictor"]
