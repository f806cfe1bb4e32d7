"""A plain-language reading of diagnostic records, computed from the numbers with stated thresholds.

``reading(records)`` -> one sentence per quantity that has something to say, e.g. "gradients vanish:
the first layer's backward error is 7.5e-06 of the last's (below 0.01)". The thresholds are
conventions for a first look, named in each sentence, not results: the figures hold the numbers.
Records of several steps are read at their latest step.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional

VANISH, EXPLODE = 1e-2, 1e2        # first / last tap's backward-error RMS
DOMINATES = 0.5                    # one block's lesion cost over the sum of all single-block costs
HARMLESS_POINTS = 2.0              # median single-block lesion cost, in points
DEAD = 0.5                         # fraction of a layer's channels that never fire


def _latest(records: List[dict]) -> Dict[tuple, object]:
    best: Dict[tuple, dict] = {}
    for r in records:
        if not isinstance(r, dict) or "quantity" not in r or "name" not in r:
            continue
        key = (r["quantity"], r.get("name"), r.get("layer"))
        if key not in best or (r.get("step") or 0) >= (best[key].get("step") or 0):
            best[key] = r
    return {k: r.get("value") for k, r in best.items()}


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _per_layer(get: Dict[tuple, object], quantity: str, name: str) -> Dict[str, float]:
    return {k[2]: _num(v) for k, v in get.items() if k[0] == quantity and k[1] == name and k[2] is not None
            and _num(v) is not None}


def _gradient_flow(get) -> Optional[str]:
    ratio = _num(get.get(("gradient_flow", "error_rms_first_last_ratio", None)))
    if ratio is None:
        return None
    loss = _num(get.get(("gradient_flow", "loss", None)))
    chance = f"; the loss {loss:.3f} is chance for 10 classes (ln 10)" if loss is not None and \
        abs(loss - math.log(10)) < 0.01 else ""
    if ratio < VANISH:
        return (f"gradients vanish: the first layer's backward error is {ratio:.2g} of the last's (below "
                f"{VANISH:g}){chance}")
    if ratio > EXPLODE:
        return (f"gradients explode toward the input: the first layer's backward error is {ratio:.3g}x the last's "
                f"(above {EXPLODE:g}){chance}")
    return (f"gradients reach the first layer: its backward error is {ratio:.3g}x the last's (within "
            f"{VANISH:g}..{EXPLODE:g}){chance}")


def _lesion(get) -> Optional[str]:
    intact = _num(get.get(("lesion", "intact_error", None)))
    errors = _per_layer(get, "lesion", "error")
    if intact is None or not errors:
        return None
    cost = {b: 100 * (e - intact) for b, e in errors.items()}
    worst = max(cost, key=cost.get)
    total = sum(max(0.0, c) for c in cost.values())
    median = statistics.median(cost.values())
    if total > 0 and cost[worst] > DOMINATES * total and len(cost) > 2:
        return (f"block {worst} dominates the lesion error: deleting it alone costs {cost[worst]:+.1f} points, "
                f"{cost[worst] / total:.0%} of all single deletions' costs (above {DOMINATES:.0%}); the median block "
                f"costs {median:+.1f}")
    if intact >= 0.8:
        return (f"the intact net's test error is {100 * intact:.1f}%, near chance, so deleting blocks cannot "
                f"show what they do (the costliest, {worst}: {cost[worst]:+.1f} points)")
    word = "harmless" if median < HARMLESS_POINTS else "not harmless"
    return (f"deleting one block is {word} for the median block ({median:+.1f} points; threshold "
            f"{HARMLESS_POINTS:g}); the costliest, {worst}, costs {cost[worst]:+.1f} (intact error "
            f"{100 * intact:.1f}%)")


def _paths(get) -> Optional[str]:
    rng, n = get.get(("paths", "effective_range", None)), _num(get.get(("paths", "num_blocks", None)))
    if not (isinstance(rng, list) and len(rng) == 2) or n is None:
        return None
    return f"90% of the input gradient flows through paths of {rng[0]}-{rng[1]} of the {n:.0f} residual blocks"


def _discriminability(get) -> Optional[str]:
    stops = [(k[2], v) for k, v in get.items() if k[:2] == ("discriminability", "probe_stops_rising")]
    sums = [layer for (q, name, layer) in get if q == "discriminability" and name == "probe_accuracy"
            and isinstance(layer, str) and layer.endswith(".sum")]
    if not stops or not sums:
        return None
    layer, index = stops[0]
    acc = _num(get.get(("discriminability", "probe_accuracy", layer)))
    at = (int(index) + 1) / len(sums)
    if at >= 1.0:
        return f"features improve to the last block (linear read-out {100 * acc:.1f}% after {layer})" if acc else None
    return (f"features stop improving after {at:.0%} of the depth: the linear read-out reaches "
            f"{100 * (acc or 0):.1f}% after {layer} and no later block adds more than 0.5 points")


def _dead(get) -> Optional[str]:
    dead = _per_layer(get, "dead_features", "dead_fraction")
    if get.get(("dead_features", "output_constant", None)) is True:
        return "the output does not depend on the input (the same logits for every example)"
    bad = {k: v for k, v in dead.items() if v >= DEAD}
    if not dead:
        return None
    if not bad:
        return f"no layer has half its channels dead (the most: {max(dead.values()):.0%})"
    return (f"{len(bad)} of {len(dead)} layers have at least {DEAD:.0%} dead channels (never positive), the most "
            f"{max(bad.values()):.0%} in {max(bad, key=bad.get)}")


READERS = {"gradient_flow": _gradient_flow, "lesion": _lesion, "paths": _paths,
           "discriminability": _discriminability, "dead_features": _dead}


def reading(records: List[dict]) -> List[str]:
    """One plain sentence per quantity the records hold and a reader exists for, in a fixed order."""
    get = _latest(records)
    present = {k[0] for k in get}
    out = []
    for quantity, read in READERS.items():
        if quantity in present:
            try:
                line = read(get)
            except (TypeError, ValueError, KeyError, ZeroDivisionError):  # records of an unexpected shape
                line = None
            if line:
                out.append(f"{quantity}: {line}")
    return out


__all__ = ["reading", "READERS"]
