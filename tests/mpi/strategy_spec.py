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


def _stable_alpha(num_groups: int) -> float:
    """EASGD's alpha well inside the stable range ``G * alpha < 1``."""
    return 0.9 / max(2, num_groups) * 0.5


def sync_cases(num_groups: int) -> Dict[str, Any]:
    """The sync strategy tests' cases (both front ends): name -> (spec, steps)."""
    return {
        "GradientPush": ({"name": "GradientPush"}, 4),
        "ModelAverage": ({"name": "ModelAverage", "period": 2}, 8),
        "EASGD": ({"name": "EASGD", "period": 2, "alpha": _stable_alpha(num_groups)}, 8),
        "DiLoCo": (
            {"name": "DiLoCo", "period": 3, "outer_lr": 0.7, "momentum": 0.9, "nesterov": True},
            9,
        ),
        "DiLoCo-heavy-ball": (
            {"name": "DiLoCo", "period": 2, "outer_lr": 0.5, "momentum": 0.8, "nesterov": False},
            6,
        ),
    }


def overlap_spec(name: str, num_groups: int, overlap: int, period: int) -> Dict[str, Any]:
    """The overlapped exchange tests' spec of ``name`` (ModelAverage, EASGD, DiLoCo)."""
    if name == "ModelAverage":
        return {"name": name, "period": period, "overlap": overlap}
    if name == "EASGD":
        alpha = _stable_alpha(num_groups)
        return {"name": name, "period": period, "alpha": alpha, "overlap": overlap}
    return {
        "name": "DiLoCo",
        "period": period,
        "outer_lr": 0.7,
        "momentum": 0.9,
        "nesterov": True,
        "overlap": overlap,
    }
