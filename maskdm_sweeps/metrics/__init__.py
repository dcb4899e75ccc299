"""FID: feature backends (TF Inception, in-domain digits CNN), cached reference statistics, the Frechet distance.

No ray, mlflow or yaml, and nothing is ever downloaded (see ``backends``).
"""

from .backends import (
    FID_BACKENDS,
    DigitsClassifierBackend,
    FeatureBackend,
    FIDWeightsNotFound,
    InceptionBackend,
    build_fid_backend,
    digits_classifier_accuracy,
    fid_inception_architecture,
    resolve_inception_weights,
)
from .fid import FIDProtocol, fid, reference_stats, reference_stats_path, stats_of_images
from .frechet import FeatureStats, StatsAccumulator, frechet_distance

__all__ = [
    "FID_BACKENDS", "DigitsClassifierBackend", "FeatureBackend", "FIDWeightsNotFound", "InceptionBackend",
    "build_fid_backend", "digits_classifier_accuracy", "fid_inception_architecture", "resolve_inception_weights",
    "FIDProtocol", "fid", "reference_stats", "reference_stats_path", "stats_of_images", "FeatureStats",
    "StatsAccumulator", "frechet_distance",
]
