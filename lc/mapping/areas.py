"""Class areas and accuracies with their uncertainty: the stratified estimator of
Olofsson et al. (2014), strata = map classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lc.metrics import json_float, ratio
from lc.worldcover import class_name

Z95 = 1.96  # the normal quantile the paper uses for 95% intervals
M2_PER_HA = 10_000.0


def _interval(estimate: float, se: float, scale: float = 1.0) -> dict:
    """``{"estimate", "se", "ci95": [low, high]}`` (null where undefined), times ``scale``."""
    est, s = estimate * scale, se * scale
    return {
        "estimate": json_float(est),
        "se": json_float(s),
        "ci95": [json_float(est - Z95 * s), json_float(est + Z95 * s)],
    }


def area_estimates(
    counts: np.ndarray,
    map_pixel_counts: np.ndarray,
    pixel_area: float,
    codes: Sequence[int],
    *,
    reference_rows: bool,
) -> dict:
    """Stratified estimates of class areas and accuracies, strata = map classes.

    Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A.
    (2014). Good practices for estimating area and assessing accuracy of land change.
    Remote Sensing of Environment 148: 42-57; its section 5 is the worked example the tests
    reproduce. With ``n_ij`` the sample counts (map class
    i, reference class j), ``n_i.`` the sample size of stratum i, ``N_i`` its mapped pixels and
    ``W_i = N_i / sum(N)``:

    - area proportions ``p_ij = W_i n_ij / n_i.`` (eq. 4); from them overall accuracy
      ``O = sum_j p_jj``, user's accuracy ``U_i = p_ii / p_i.``, producer's ``P_j = p_jj / p_.j``;
    - ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)`` (eq. 5);
    - ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)`` (eq. 6);
    - ``V(P_j) = [N_j.^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j. - 1)
      + P_j^2 sum_{i != j} N_i.^2 (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1)] / N_.j^2``
      with ``N_.j = sum_i N_i. n_ij / n_i.`` (eq. 7; computed with W in place of N, the same);
    - area proportion of reference class k ``p_.k = sum_i W_i n_ik / n_i.`` (eq. 9), its
      standard error ``S(p_.k) = sqrt(sum_i W_i^2 (n_ik/n_i.)(1 - n_ik/n_i.) / (n_i. - 1))``
      (eq. 10), and the area ``A_k = A p_.k`` with ``S(A_k) = A S(p_.k)`` (eqs. 9-11 together);
      every 95% interval is estimate +- 1.96 SE, unclipped, as in the paper.

    Strata that cannot follow these formulas are handled so, and listed in the result:

    - ``n_i. = 0`` with ``N_i > 0`` (``unsampled_strata``): nothing is known of what the stratum
      holds on the ground, so it is left out of the population: W is taken over the sampled
      strata, the estimated areas add up to their mapped area (``population_area_m2``) and the
      accuracies refer to them. Its user's accuracy is null.
    - ``n_i. = 1`` (``strata_without_variance``): its within-stratum variance cannot be
      estimated; its terms are left out of every variance sum (so those SEs are lower bounds)
      and its user's accuracy SE is null.

    Args:
        counts: (K, K) sample counts. With ``reference_rows=True`` rows are reference classes
            (the layout of :class:`ConfusionAccumulator`); with ``False`` rows are map classes,
            as in the paper's Table 8. Keyword-only and without default so that every caller
            states it.
        map_pixel_counts: (K,) mapped pixels of each class over the whole map.
        pixel_area: area of one pixel in m^2.
        codes: the K class codes, the order of rows, columns and counts.

    Note: with every labelled pixel of a scene as "sample" (not a random sample) the SEs
    describe the estimator's sampling variance only under that assumption; spatially
    clustered reference makes them optimistic.
    """
    n = np.asarray(counts, dtype=float)
    n = n.T if reference_rows else n
    mapped = np.asarray(map_pixel_counts, dtype=float)
    codes = [int(c) for c in codes]
    if n.shape != (len(codes), len(codes)) or mapped.shape != (len(codes),):
        raise ValueError(f"counts {n.shape} and map_pixel_counts {mapped.shape} must fit {len(codes)} codes")
    n_i = n.sum(axis=1)
    if np.any((n_i > 0) & (mapped <= 0)):
        raise ValueError("a class has samples but no mapped pixels: counts and map_pixel_counts disagree")
    sampled = n_i > 0
    population_px = mapped[sampled].sum()
    weight = np.where(sampled, ratio(mapped, population_px), 0.0)
    f = np.nan_to_num(ratio(n, n_i[:, None]))  # n_ij / n_i., 0 in unsampled strata
    p = weight[:, None] * f  # eq. 4
    p_ref = p.sum(axis=0)  # eq. 9
    users = ratio(np.diag(p), weight)
    producers = ratio(np.diag(p), p_ref)
    dof = np.where(n_i > 1, n_i - 1, np.inf)  # n_i. <= 1: no variance term (see docstring)
    stratum_var = f * (1 - f) / dof[:, None]  # (n_ij/n_i.)(1 - n_ij/n_i.)/(n_i. - 1)
    var_users = np.where(n_i > 1, np.diag(stratum_var), np.nan)  # eq. 6
    var_overall = np.nansum(weight**2 * var_users)  # eq. 5
    terms = weight[:, None] ** 2 * stratum_var
    var_p_ref = terms.sum(axis=0)  # eq. 10 squared
    own = weight**2 * (1 - producers) ** 2 * np.nan_to_num(var_users)
    others = terms.sum(axis=0, where=~np.eye(len(codes), dtype=bool))  # strata i != j
    var_producers = ratio(own + producers**2 * others, p_ref**2)  # eq. 7
    per_class = {}
    for k, code in enumerate(codes):
        area_px, area_se = p_ref[k] * population_px, np.sqrt(var_p_ref[k]) * population_px
        per_class[str(code)] = {
            "name": class_name(code),
            "mapped_pixels": int(mapped[k]),
            "mapped_area_m2": float(mapped[k] * pixel_area),
            "mapped_area_ha": float(mapped[k] * pixel_area / M2_PER_HA),
            "sample_count": int(n_i[k]),
            "area_proportion": _interval(p_ref[k], np.sqrt(var_p_ref[k])),
            "area_pixels": _interval(area_px, area_se),
            "area_m2": _interval(area_px, area_se, pixel_area),
            "area_ha": _interval(area_px, area_se, pixel_area / M2_PER_HA),
            "users_accuracy": _interval(users[k], np.sqrt(var_users[k])),
            "producers_accuracy": _interval(producers[k], np.sqrt(var_producers[k])),
        }
    return {
        "method": "stratified estimator, strata = map classes (Olofsson et al. 2014, RSE 148:42-57)",
        "class_order": codes,
        "class_names": [class_name(c) for c in codes],
        "pixel_area_m2": float(pixel_area),
        "mapped_area_m2": float(mapped.sum() * pixel_area),
        "population_area_m2": float(population_px * pixel_area),
        "unsampled_strata": [c for c, m, s in zip(codes, mapped, sampled) if m > 0 and not s],
        "strata_without_variance": [c for c, k in zip(codes, n_i) if k == 1],
        "overall_accuracy": _interval(np.trace(p) if sampled.any() else np.nan, np.sqrt(var_overall)),
        "per_class": per_class,
        "error_matrix": {"rows": "map", "columns": "reference", "area_proportions": p.tolist()},
    }
