"""depthlab.diagnostics.reading: the plain-language reading of diagnostic records, each sentence
computed from the numbers against its stated threshold."""
import math

from depthlab.diagnostics.reading import reading


def rec(quantity, name, value, layer=None, step=0):
    return {"quantity": quantity, "name": name, "value": value, "layer": layer, "step": step}


def test_gradient_flow_vanishing_exploding_and_fine_at_the_latest_step():
    old = rec("gradient_flow", "error_rms_first_last_ratio", 1.0, step=0)
    vanish = [old, rec("gradient_flow", "error_rms_first_last_ratio", 7.5e-6, step=10),
              rec("gradient_flow", "loss", math.log(10), step=10)]
    (line,) = reading(vanish)
    assert line == ("gradient_flow: gradients vanish: the first layer's backward error is 7.5e-06 of the last's "
                    "(below 0.01); the loss 2.303 is chance for 10 classes (ln 10)")
    assert "explode toward the input" in reading([rec("gradient_flow", "error_rms_first_last_ratio", 350.0)])[0]
    assert "reach the first layer" in reading([rec("gradient_flow", "error_rms_first_last_ratio", 0.5)])[0]


def test_lesion_names_a_dominating_block_or_the_median_cost():
    base = [rec("lesion", "intact_error", 0.05)]
    dom = base + [rec("lesion", "error", e, f"b{i}") for i, e in enumerate([0.65, 0.06, 0.07, 0.05])]
    assert reading(dom) == ["lesion: block b0 dominates the lesion error: deleting it alone costs +60.0 points, "
                            "95% of all single deletions' costs (above 50%); the median block costs +1.5"]
    flat = base + [rec("lesion", "error", e, f"b{i}") for i, e in enumerate([0.06, 0.07, 0.08, 0.06])]
    assert "harmless for the median block (+1.5 points; threshold 2); the costliest, b2, costs +3.0" in reading(flat)[0]


def test_discriminability_paths_and_dead_features():
    probes = [rec("discriminability", "probe_accuracy", a, f"s{i}.sum") for i, a in enumerate([0.5, 0.8, 0.8, 0.8])]
    stop = rec("discriminability", "probe_stops_rising", 1, "s1.sum")
    assert reading(probes + [stop]) == ["discriminability: features stop improving after 50% of the depth: the linear "
                                        "read-out reaches 80.0% after s1.sum and no later block adds more than "
                                        "0.5 points"]
    paths = [rec("paths", "effective_range", [2, 9]), rec("paths", "num_blocks", 27.0)]
    assert reading(paths) == ["paths: 90% of the input gradient flows through paths of 2-9 of the 27 residual blocks"]
    dead = [rec("dead_features", "dead_fraction", f, f"c{i}") for i, f in enumerate([0.1, 0.6, 0.9])]
    assert reading(dead) == ["dead_features: 2 of 3 layers have at least 50% dead channels (never positive), the "
                             "most 90% in c2"]
    assert reading([{"quantity": "lesion", "name": "intact_error", "value": "x"}]) == []  # malformed: silent


def test_an_inconclusive_verdict_gives_its_spread_in_the_units_of_its_numbers():
    from depthlab.experiments.base import verdict

    assert verdict("c", None, "d", 3, 0.00627, points=True)["status"] == "inconclusive (3 seeds, spread 0.63 points)"
    assert verdict("c", None, "d", 3, 0.0727)["status"] == "inconclusive (3 seeds, spread 0.0727)"
    assert verdict("c", None, "d", 8, 0.05, unit="init")["status"] == "inconclusive (8 inits, spread 0.05)"
