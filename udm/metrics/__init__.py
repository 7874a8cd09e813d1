"""Evaluation of samples. Images: a feature classifier, Fréchet distance, class and memorisation
statistics. Token sequences: validity, n-gram perplexity, distinct-n."""
from udm.metrics.classifier import Classifier, load_classifier
from udm.metrics.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from udm.metrics.images import image_grid, save_image_grid
from udm.metrics.sample_stats import class_statistics, memorisation_report, nearest_neighbour_distances
from udm.metrics.text import NGramModel, distinct_n, fit_reference_model, text_report, validity

__all__ = [
        "Classifier",
        "NGramModel",
        "distinct_n",
        "fit_reference_model",
        "text_report",
        "validity",
        "class_statistics",
        "frechet_distance",
        "frechet_distance_from_stats",
        "gaussian_stats",
        "image_grid",
        "load_classifier",
        "memorisation_report",
        "nearest_neighbour_distances",
        "save_image_grid",
]
