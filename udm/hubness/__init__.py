"""Hubness: exact k-nearest neighbours, the k-occurrence N_k, its measures, hubness reduction,
and the hubness-prior latent filter (docs/hubness.md).

    N_k(x_i) = #{ j != i : x_i in kNN(x_j) }                                        (H1)

Everything is exact (brute force, O(N^2 d)) and jitted: query points are processed in blocks
of `block_size` rows, so the neighbour search holds O(block_size x N) distances at a time, never
the N x N matrix. The hubness reductions (mutual proximity, local scaling, NICDM, CSLS) do work
on a dense N x N float32 distance matrix (4 N^2 bytes: 16 MB at N = 2000, 400 MB at N = 10^4),
read in row blocks.

Tie-breaking, everywhere: among equal distances the lower index comes first. It is what
`jax.lax.top_k` does on the negated distances (checked in tests/test_hubness.py), and it makes
the neighbour lists a deterministic function of the data.

Sources: Radovanović, Nanopoulos, Ivanović, "Hubs in Space", JMLR 2010 (N_k and its skewness);
kexue.fm/archives/9147 and Liang et al., ICML 2022, arXiv 2206.06014 (hubness prior for GAN
latents); Feldbauer et al. 2018 and scikit-hubness (hub / anti-hub occurrence, Robin Hood
index); the papers of each reduction are cited at its function.
"""
from udm.hubness._checks import METRICS
from udm.hubness.knn import k_occurrence, k_occurrence_of, knn
from udm.hubness.latents import (HubSelection, hub_antihub_select, hub_select,
                                 truncated_mean_norm, truncated_normal_matched,
                                 truncation_radius)
from udm.hubness.measures import (DEFAULT_HUB_THRESHOLD, antihub_occurrence,
                                  corr_with_distance_to_mean, gini, hub_occurrence,
                                  hubness_measures, hubness_report, robin_hood_index, skewness)
from udm.hubness.reductions import (COSINE_ONLY, REDUCTIONS, centering, csls, local_scaling,
                                    mutual_proximity_empiric, mutual_proximity_gaussian, nicdm,
                                    no_reduction, pairwise_distances, reduce_and_report,
                                    reduction_reports)

__all__ = [
        "COSINE_ONLY",
        "DEFAULT_HUB_THRESHOLD",
        "HubSelection",
        "METRICS",
        "REDUCTIONS",
        "antihub_occurrence",
        "centering",
        "corr_with_distance_to_mean",
        "csls",
        "gini",
        "hub_antihub_select",
        "hub_occurrence",
        "hub_select",
        "hubness_measures",
        "hubness_report",
        "k_occurrence",
        "k_occurrence_of",
        "knn",
        "local_scaling",
        "mutual_proximity_empiric",
        "mutual_proximity_gaussian",
        "nicdm",
        "no_reduction",
        "pairwise_distances",
        "reduce_and_report",
        "reduction_reports",
        "robin_hood_index",
        "skewness",
        "truncated_mean_norm",
        "truncated_normal_matched",
        "truncation_radius",
]
