"""FID: feature backends (TF Inception, in-domain digits CNN), cached reference statistics, the Frechet distance.

One module per concept: ``backend`` (the protocol and the registry), ``inception``, ``digits_classifier``,
``preprocess`` (what every backend does to its input), ``frechet``, ``fid``. No ray, mlflow or yaml, and nothing is
ever downloaded (see ``inception`` and ``digits_classifier``).
"""

from .backend import FID_BACKENDS, FeatureBackend, build_fid_backend, feature_flops_per_image
from .digits_classifier import RECOGNISABLE_CONFIDENCE, DigitsClassifierBackend, digits_classifier_accuracy
from .fid import FIDProtocol, fid, reference_stats, reference_stats_path, stats_of_images
from .frechet import FeatureStats, StatsAccumulator, frechet_distance
from .inception import FIDWeightsNotFound, InceptionBackend, fid_inception_architecture, resolve_inception_weights

__all__ = [
    "FID_BACKENDS",
    "RECOGNISABLE_CONFIDENCE",
    "DigitsClassifierBackend",
    "FIDProtocol",
    "FIDWeightsNotFound",
    "FeatureBackend",
    "FeatureStats",
    "InceptionBackend",
    "StatsAccumulator",
    "build_fid_backend",
    "digits_classifier_accuracy",
    "feature_flops_per_image",
    "fid",
    "fid_inception_architecture",
    "frechet_distance",
    "reference_stats",
    "reference_stats_path",
    "resolve_inception_weights",
    "stats_of_images",
]
