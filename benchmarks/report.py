"""Rows, markdown table and plots of ``benchmarks/cluster_suite.py`` (from its jobs' output)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List

from benchmarks import model

#: bytes per parameter of each wire: the compressed ones carry a float32 scale per 128 values
WIRE_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 132 / 128, "int4": 68 / 128}
#: the methods whose wire ``--wire`` sets: hvd_ps's (HVD_PS_WIRE_DTYPE) and Horovod's
#: (float16 compression); the stock KVStore of dist_sync has no float16 wire
WIRED = ("horovod", "gradient_push") + model.PERIODIC


def _setting(a: Dict) -> str:
    """The hvd_ps mode and the emulated straggler of a suite run, as a sentence (or nothing)."""
    text = ""
    if a.get("ps_mode", "sync") != "sync":
        bound = a.get("max_staleness")
        text += f"hvd_ps mode {a['ps_mode']}" + (f", max_staleness {bound}" if bound else "")
        text += " (ModelAverage stays sync). "
    if a.get("slow_group") is not None:
        text += (f"Straggler (emulated): host {a['slow_group']} computes {a['slowdown']:g} "
                 "times as slowly in every run (forward and backward stretched); s/step is the "
                 "slowest rank's, samples/s the sum of every rank's own. ")  # fmt: skip
    return text


def wire_bytes(method: str, wire: str) -> float:
    """Bytes per parameter a method's exchange carries under ``--wire``: hvd_ps's the wire's,
    Horovod's float16 for any compressed wire, dist_sync's float32 (its 2-bit compression
    shrinks only its pushes, which the cost model does not follow)."""
    if method == "horovod":
        return 4.0 if wire == "float32" else 2.0
    return WIRE_BYTES[wire] if method in WIRED else 4.0


def setup_s(ranks: List[Dict]) -> float | None:
    """Seconds from a run's start to its first step on the slowest rank (data, model and
    trainer; an hvd_ps trainer registers its PS keys in its first step, which is not in it);
    ``None`` from a job that did not record it."""
    if not all("set_up" in r for r in ranks):
        return None
    return max(r["set_up"] - r["run_started"] for r in ranks)


def throughput_row(spec: Dict, got: Dict, hosts: int, rpn: int, link: str, args) -> Dict:
    """One run's numbers. The step time is the slowest rank's mean over the timed window;
    ``job_link_bytes`` counts the whole run (set-up, PS key registration and warm-up too)."""
    ranks = got["ranks"]
    warm = len(ranks[0]["steps"]) - spec["steps"]
    per_rank = [sum(r["steps"][warm:]) / spec["steps"] for r in ranks]
    step_s = max(per_rank)
    slowest = ranks[per_rank.index(step_s)]
    compute = statistics.mean(sum(r["fwd_bwd"][warm:]) / spec["steps"] for r in ranks)
    window = [r for r in ranks if "counters_start" in r and r["counters_start"]]
    run_window = [r for r in ranks if r.get("run_counters_start")]
    sent = sum(r["counters_end"]["tx_bytes"] - r["counters_start"]["tx_bytes"] for r in window)
    row = {
        **{k: spec[k] for k in ("name", "method", "period", "overlap", "steps")},
        "hosts": hosts,
        "ranks_per_host": rpn,
        "link": link,
        "params": ranks[0]["params"],
        "batch": args.batch,
        "wire_bytes": wire_bytes(spec["method"], args.wire),
        "server_hosts": hosts,
        "step_s": step_s,
        # with a straggler every rank counts at its own pace (an async run's fast hosts do more)
        "samples_per_s": sum(args.batch / s for s in per_rank)
        if getattr(args, "slow_group", None) is not None
        else hosts * rpn * args.batch / step_s,
        "link_bytes_per_step": sent / spec["steps"] if len(window) == hosts else None,
        "job_link_bytes": sum(
            r["run_counters_end"]["tx_bytes"] - r["run_counters_start"]["tx_bytes"]
            for r in run_window
        ),
        "compute_s": compute,
        "rest_s": step_s - compute,
        "test_accuracy": ranks[0].get("test_accuracy"),
        "eval_s": ranks[0].get("eval_s"),
        "wall_s": got["wall_s"],
        "setup_s": setup_s(ranks),
        "slowest_rank": slowest["rank"],
        "slowest_rank_steps_s": slowest["steps"],  # warm-up included, for a look at the noise
        # a rank's peak memory so far in its job (runs share a job): a leak shows as growth
        "max_rss_mb": max(r.get("max_rss_mb", 0.0) for r in ranks),
    }
    stats = [r["stats"] for r in ranks if "stats" in r]
    if stats:
        n = spec["steps"]
        row["allreduce_s"] = statistics.mean(s["allreduce_s"] for s in stats) / n
        row["update_s"] = statistics.mean(s["update_s"] for s in stats) / n
        row["exchange_s"] = statistics.mean(s["exchange_s"] for s in stats) / n
        waits = [s.get("ps_wait_s") for s in stats]
        row["ps_wait_s"] = None if None in waits else max(waits) / n  # the leaders' wait
    return row


def accuracy_row(spec: Dict, got: Dict, hosts: int, rpn: int, link: str) -> Dict:
    r0 = got["ranks"][0]
    return {
        "name": spec["name"],
        "method": spec["method"],
        "hosts": hosts,
        "ranks_per_host": rpn,
        "link": link,
        "params": r0["params"],
        "reached": r0["reached"],
        "train_s": r0["train_s"],
        "epochs": r0["reached_epoch"] or len(r0["evals"]),  # the first epoch at the target
        "final_test_accuracy": r0["evals"][-1]["test_accuracy"],
        "eval_s": sum(e["eval_s"] for e in r0["evals"]),
        "evals": r0["evals"],
        "seed": spec.get("seed"),
        "wall_s": got["wall_s"],  # the whole run: set-up, every epoch, every evaluation
        "setup_s": setup_s(got["ranks"]),
    }


def merge_seeds(acc: List[Dict]) -> List[Dict]:
    """One row per accuracy run of a cluster (in the order of the plan) over its seeds: the
    mean training time to the target (``None`` unless every seed reached it), the mean epoch
    and final accuracy, every seed's final accuracy (``final_runs``), and for an overlapped run
    its final accuracy minus its blocking twin's of the same seed, per seed (``vs_blocking``,
    points)."""
    groups: Dict = {}
    for r in acc:
        groups.setdefault((r["hosts"], r["ranks_per_host"], r["name"]), []).append(r)
    final = {(r["hosts"], r["ranks_per_host"], r["name"], r.get("seed")): r["final_test_accuracy"]
             for r in acc}  # fmt: skip
    merged = []
    for (hosts, rpn, name), rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("seed") or 0)
        reached = all(r["reached"] for r in rows)
        row = dict(rows[0])
        row.update(
            seeds=[r.get("seed") for r in rows],
            reached=reached,
            train_s=statistics.mean(r["train_s"] for r in rows),
            train_runs=[r["train_s"] for r in rows],
            epochs=statistics.mean(r["epochs"] for r in rows),
            final_test_accuracy=statistics.mean(r["final_test_accuracy"] for r in rows),
            final_runs=[r["final_test_accuracy"] for r in rows],
        )
        if " overlap=" in name:
            twin = name.split(" overlap=")[0]
            keys = [(hosts, rpn, twin, r.get("seed")) for r in rows]
            row["vs_blocking"] = [(r["final_test_accuracy"] - final[k]) * 100
                                  for k, r in zip(keys, rows) if k in final]  # fmt: skip
        merged.append(row)
    return merged


def progress(row: Dict, elapsed: float) -> str:
    rep = f" (repeat {row['repeat'] + 1})" if row.get("repeat") else ""
    return (f"[{elapsed:6.0f} s] {row['hosts']}x{row['ranks_per_host']} {row['link']} "
            f"{row['name']}{rep}: {row['step_s']:.3f} s/step, "
            f"{row['samples_per_s']:.1f} samples/s, run {row['wall_s']:.0f} s")  # fmt: skip


def progress_job(specs: List[Dict], hosts: int, rpn: int, link: str, elapsed: float) -> str:
    """The line printed as a job starts (its runs' lines follow when it ends): its runs in
    order, an accuracy run with its seed."""
    names = ", ".join(s["name"] + (f" (accuracy, seed {s['seed']})" if s["mode"] == "accuracy"
                                   else "") for s in specs)  # fmt: skip
    return f"[{elapsed:6.0f} s] {hosts}x{rpn} {link} job of {len(specs)} runs: {names}"


def progress_acc(row: Dict, elapsed: float) -> str:
    return (f"[{elapsed:6.0f} s] accuracy {row['name']}: {row['final_test_accuracy']:.4f} after "
            f"{row['train_s']:.1f} s of training ({row['epochs']} epochs), "
            f"run {row['wall_s']:.0f} s")  # fmt: skip


def _fmt(v, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec)


def efficiency(runs: List[Dict]) -> None:
    """Add efficiency (bound / method) and speed-ups over Horovod and dist_sync per config."""
    for r in runs:
        same = [o for o in runs if (o["hosts"], o["ranks_per_host"], o["link"])
                == (r["hosts"], r["ranks_per_host"], r["link"])]  # fmt: skip
        ref = {o["method"]: o["step_s"] for o in same if o["method"] in ("bound", "horovod",
                                                                          "dist_sync")}  # fmt: skip
        r["efficiency"] = ref["bound"] / r["step_s"] if "bound" in ref else None
        r["speedup_vs_horovod"] = ref["horovod"] / r["step_s"] if "horovod" in ref else None
        r["speedup_vs_dist_sync"] = ref["dist_sync"] / r["step_s"] if "dist_sync" in ref else None


def _config(r: Dict):
    return (r["hosts"], r["ranks_per_host"], r["link"])


def merge_repeats(rows: List[Dict]) -> List[Dict]:
    """One row per run of a cluster and link, in the order of the plan: the repeat with the
    median step time (the lower one of an even count), with every repeat's step time
    (``step_s_runs``) and efficiency (``efficiency_runs``: the bound of the same repeat over
    the method's), in repeat order."""
    bound = {(_config(r), r.get("repeat", 0)): r["step_s"] for r in rows if r["method"] == "bound"}
    groups: Dict = {}
    for r in rows:
        groups.setdefault(_config(r) + (r["name"],), []).append(r)
    merged = []
    for group in groups.values():
        by_time = sorted(group, key=lambda r: r["step_s"])
        row = dict(by_time[(len(by_time) - 1) // 2])
        in_order = sorted(group, key=lambda r: r.get("repeat", 0))
        row["repeats"] = len(group)
        row["step_s_runs"] = [r["step_s"] for r in in_order]
        keys = [(_config(r), r.get("repeat", 0)) for r in in_order]
        row["efficiency_runs"] = [bound[k] / r["step_s"] for k, r in zip(keys, in_order)
                                  if k in bound]  # fmt: skip
        merged.append(row)
    return merged


def spread(r: Dict) -> str:
    """``min-max`` of a merged row's step times and efficiencies over its repeats."""
    times, effs = r.get("step_s_runs", []), r.get("efficiency_runs", [])
    if len(times) < 2:
        return ""
    text = f"{min(times):.3f}-{max(times):.3f} s"
    return text + (f"; {min(effs):.2f}-{max(effs):.2f}" if effs else "")


def param_count(hidden: str) -> int:
    """Parameters of the digits MLP 64-``hidden``-10 (weights and biases)."""
    widths = [64] + [int(w) for w in hidden.split(",") if w] + [10]
    return sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))


def markdown(results: Dict, elapsed: float) -> str:
    a = results["args"]
    runs = results["runs"]
    repeats = max((r.get("repeats", 1) for r in runs), default=1)
    out = [
        "# hvd_ps at the paper's scale on emulated clusters",
        "",
        f"MLP 64-{a['hidden'].replace(',', '-')}-10 "
        f"({param_count(a['hidden']) / 1e6:.1f}M parameters) "
        f"on digits, {a['batch']} samples per rank and step, SGD lr 0.1 momentum 0.9, seed "
        f"{a['seed']}; hosts are network namespaces on a switch, each link `tc tbf`-shaped both "
        "ways; one group per host; one server per host for dist_sync (MXNet's stock servers) "
        f"and hvd_ps (its own servers); hvd_ps wire dtype {a['wire']}. Timed window: "
        f"{a['steps']} steps after {a['warmup']} of warm-up ({a['period'] - 1} for an overlapped "
        "run, so that its window starts with an exchange and ends with it applied), "
        f"{a['slow_steps']} for the methods that cross the link every step; evaluation timed "
        "apart; the initial parameters come from one seed on every rank (checked), not from a "
        "broadcast. "
        "`OMP_NUM_THREADS=1`, `OMPI_MCA_mpi_yield_when_idle=1` (4 ranks on 2 cores). "
        f"overlap supported by this hvd_ps: {results['overlap_supported']}. "
        + _setting(a)
        + f"Run {results['started']}, {elapsed / 60:.1f} min in all.",
        "",
        "efficiency = bound time / method time; MB/step: what crossed the links (all hosts' "
        "sent bytes); compute = forward+backward; allreduce / PS wait / exchange per step from "
        "`trainer.stats()` (hvd_ps only); rest = step - compute."
        + (f" Each method ran {repeats} times, interleaved; a row is its median run, and "
           "spread is the min-max of its step time and of its efficiency (each against the "
           "bound of the same repeat)." if repeats > 1 else ""),
        "",
        "| cluster | link | method | s/step | samples/s | efficiency | vs Horovod | vs dist_sync "
        "| MB/step | compute s | allreduce s | PS wait s | exchange s | rest s | eval s | acc |"
        + (" spread |" if repeats > 1 else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---|" if repeats > 1 else ""),
    ]  # fmt: skip
    for r in runs:
        mb = None if r["link_bytes_per_step"] is None else r["link_bytes_per_step"] / 1e6
        out.append(
            f"| {r['hosts']}x{r['ranks_per_host']} | {r['link']} | {r['name']} | "
            f"{r['step_s']:.3f} | {r['samples_per_s']:.1f} | {_fmt(r['efficiency'], '.2f')} | "
            f"{_fmt(r['speedup_vs_horovod'], '.2f')} | {_fmt(r['speedup_vs_dist_sync'], '.2f')} | "
            f"{_fmt(mb, '.1f')} | {r['compute_s']:.3f} | {_fmt(r.get('allreduce_s'))} | "
            f"{_fmt(r.get('ps_wait_s'))} | {_fmt(r.get('exchange_s'))} | {r['rest_s']:.3f} | "
            f"{_fmt(r['eval_s'], '.2f')} | {_fmt(r['test_accuracy'])} |"
            + (f" {spread(r)} |" if repeats > 1 else "")
        )
    for cluster in sorted({(r["hosts"], r["ranks_per_host"]) for r in results["accuracy"]}):
        out += accuracy_table(results, cluster)
    out += ["", "## Cost model (benchmarks/model.py) against every measured run", "",
            model.CALIBRATION_NOTE, ""]  # fmt: skip
    out.append(model.check_markdown(results["model_check"]))
    return "\n".join(out) + "\n"


def accuracy_table(results: Dict, cluster) -> List[str]:
    """The time-to-accuracy section of one cluster."""
    a = results["args"]
    acc = merge_seeds([r for r in results["accuracy"]
                       if (r["hosts"], r["ranks_per_host"]) == cluster])  # fmt: skip
    seeds = len(acc[0]["seeds"])
    hvd = next((r for r in acc if r["method"] == "horovod"), None)
    out = [
        "",
        f"## Time to {a['target']:.0%} test accuracy ({cluster[0]}x{cluster[1]}, "
        f"{acc[0]['link']}, MLP 64-{a['acc_hidden'].replace(',', '-')}-10, "
        f"{acc[0]['params'] / 1e6:.1f}M parameters)",
        "",
        "Training time only (the global model is evaluated after every epoch, timed apart), "
        f"until the first epoch at the target; every run trains all {a['epochs']} epochs, "
        "and the final accuracy is the global model's after the last (overlapped runs: "
        "the change against their blocking twin, in points)."
        + (f" Every method ran with {seeds} seeds ({', '.join(map(str, acc[0]['seeds']))}: "
           "data split, shards, initial model); a row shows the means, the spread the "
           "min-max of the final accuracy, and vs blocking the mean of the per-seed "
           "differences with their min-max." if seeds > 1 else ""),
        "",
        "| method | reached | training s | vs Horovod | epoch | final accuracy | vs blocking |"
        + (" spread |" if seeds > 1 else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---|" if seeds > 1 else ""),
    ]  # fmt: skip
    for r in acc:
        both = hvd is not None and r["reached"] and hvd["reached"]
        ratio = r["train_s"] / hvd["train_s"] if both else None
        diffs = r.get("vs_blocking") or []
        diff = _fmt(statistics.mean(diffs), "+.1f") if diffs else ""
        if len(diffs) > 1:
            diff += f" ({min(diffs):+.1f} to {max(diffs):+.1f})"
        epoch = f"{r['epochs']:.1f}" if seeds > 1 else f"{r['epochs']}"
        line = (
            f"| {r['name']} | {'yes' if r['reached'] else 'no'} | {r['train_s']:.1f} | "
            f"{_fmt(ratio, '.2f')}x | {epoch} | {r['final_test_accuracy']:.4f} | {diff} |"
        )
        if seeds > 1:
            line += f" {min(r['final_runs']):.4f}-{max(r['final_runs']):.4f} |"
        out.append(line)  # fmt: skip
    return out


def plot_efficiency(runs: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["hosts"], r["ranks_per_host"], r["link"]) for r in runs},
                     key=lambda c: (c[0], -model.rate_bytes(c[2])))  # fmt: skip
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4), squeeze=False)
    for ax, (h, rpn, link) in zip(axes[0], configs):
        rows = [r for r in runs if (r["hosts"], r["ranks_per_host"], r["link"]) == (h, rpn, link)]
        ax.barh([r["name"] for r in rows], [r["efficiency"] or 0 for r in rows], color="#4a7ab5")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel("efficiency (bound time / method time)")
        ax.set_title(f"{h} hosts x {rpn} ranks, {link}", fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_accuracy(acc: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = sorted({(r["hosts"], r["ranks_per_host"]) for r in acc})
    fig, axes = plt.subplots(1, len(clusters), figsize=(7 * len(clusters), 4), squeeze=False)
    for ax, (h, rpn) in zip(axes[0], clusters):
        for r in acc:
            if (r["hosts"], r["ranks_per_host"]) != (h, rpn):
                continue
            ax.plot([e["train_s"] for e in r["evals"]], [e["test_accuracy"] for e in r["evals"]],
                    marker=".", label=r["name"])  # fmt: skip
        ax.set_title(f"{h} hosts x {rpn} ranks, {acc[0]['link']}", fontsize=9)
        ax.set_xlabel("training time (s, evaluation excluded)")
        ax.set_ylabel("test accuracy of the global model")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finish(results: Dict, stem: Path, elapsed: float) -> None:
    """Repeats merged (the raw rows kept as ``repeat_runs``), efficiencies, the cost-model
    check, then JSON, markdown and plots at ``stem``."""
    if any(r.get("repeat", 0) for r in results["runs"]):
        results["repeat_runs"] = results["runs"]
    results["runs"] = merge_repeats(results["runs"])
    efficiency(results["runs"])
    results["model_check"] = model.check(results["runs"])
    results["elapsed_s"] = elapsed
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1))
    md = markdown(results, elapsed)
    Path(f"{stem}.md").write_text(md)
    if results["runs"]:
        plot_efficiency(results["runs"], Path(f"{stem}_efficiency.png"))
        model.plot_scaling(results, Path(f"{stem}_model.png"))
    if results["accuracy"]:
        plot_accuracy(results["accuracy"], Path(f"{stem}_accuracy.png"))
    print(md)
