"""The MPI tests' strategies: a reference spec (tests/reference.py's dict) as an hvd_ps value."""

from __future__ import annotations

from typing import Any, Dict


def strategy(spec: Dict[str, Any], mode: str = "sync") -> Any:
    """The hvd_ps strategy ``spec`` names, in ``mode`` (ModelAverage is sync only)."""
    import hvd_ps

    name, overlap = spec["name"], spec.get("overlap", 0)
    bound = spec.get("max_staleness")
    auto = {k: spec[k] for k in ("min_period", "max_period") if k in spec}
    quorum = {k: spec[k] for k in ("quorum", "grace") if k in spec}
    auto.update(quorum)
    if name == "GradientPush":
        return hvd_ps.GradientPush(mode=mode, max_staleness=bound, **quorum)
    if name == "ModelAverage":
        return hvd_ps.ModelAverage(period=spec["period"], overlap=overlap, **quorum)
    if name == "EASGD":
        return hvd_ps.EASGD(
            spec["period"], spec["alpha"], mode=mode, overlap=overlap, max_staleness=bound, **auto
        )
    return hvd_ps.DiLoCo(
        period=spec["period"],
        outer_lr=spec["outer_lr"],
        momentum=spec["momentum"],
        nesterov=spec["nesterov"],
        mode=mode,
        overlap=overlap,
        max_staleness=bound,
        **auto,
    )
