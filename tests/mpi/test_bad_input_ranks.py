"""The bad-input matrix, the cases that need ranks inside one MPI session (pytest-mpi).

Every case is a row of a table: what goes wrong, the exact exception class every rank must
raise, and a regular expression on the message that includes what the user should do. No
case leaves a collective half done, so the session goes on with the next case: a NaN is
injected on every rank (so that every group's leader refuses it at the same step and no sync
round is left open), a model that differs differs at the trainer's first step (every rank
compares the same signatures). The case of one group's NaN in a job of several is in
tests/jobs/test_bad_input.py (the job ends through mpirun).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
import pytest

import hvd_ps

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference as ref  # noqa: E402

OPT = {"learning_rate": 0.1}
ADVICE = r"lower the learning rate, clip the gradients .* or check the input data"


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Any], None]  # the bad input, given the session's runtime
    error: str  # the exact class, by its name in hvd_ps.errors
    match: str  # on every rank's message, with what to do
    leader_match: Optional[str] = None  # more, on the leaders' messages
    min_size: int = 1  # ranks the case needs (a model that differs needs two)


def _net(tag: str, dtype: str = "float32", units: int = ref.OUT, shift: float = 0.0):
    import mxnet as mx

    net = mx.gluon.nn.Dense(units, in_units=ref.IN, prefix=f"{tag}_", dtype=dtype)
    net.initialize()
    w0, b0 = ref.initial()
    if units == ref.OUT:
        net.weight.set_data(mx.nd.array(w0 + shift, dtype=dtype))
        net.bias.set_data(mx.nd.array(b0, dtype=dtype))
    return net


def _train(net, sync, steps: int, poison: Optional[Callable[[int, Any], None]] = None, **kw):
    import horovod.mxnet as hvd
    import mxnet as mx

    trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", dict(OPT), sync=sync, **kw)
    for t in range(1, steps + 1):
        x, y = ref.batch(hvd.rank(), t)
        if poison is not None:
            x, y = poison(t, (x, y)) or (x, y)
        with mx.autograd.record():
            loss = 0.5 * ((net(mx.nd.array(x)) - mx.nd.array(y)) ** 2).sum(axis=1)
        loss.backward()
        trainer.step(ref.BATCH)
    return trainer


def _last_rank() -> bool:
    import horovod.mxnet as hvd

    return hvd.rank() == hvd.size() - 1


# -- the cases --------------------------------------------------------------------------------


def nan_in_parameters(rt):
    net = _net("nan_x")

    def poison(t, batch):
        if t == 2:  # after step 1's exchange: step 2's update and push carry the NaN
            w = net.weight.data()
            w[0, 0] = float("nan")

    _train(net, hvd_ps.ModelAverage(period=1), 3, poison)


def inf_in_overlapped_snapshot(rt):
    net = _net("inf_overlap")

    def poison(t, batch):
        if t == 2:
            net.bias.data()[0] = float("inf")

    _train(net, hvd_ps.EASGD(period=2, alpha=0.1 / rt.topo.total_groups, overlap=1), 4, poison)


def inf_in_gradients(rt):
    def poison(t, batch):
        x, y = batch
        if t == 2:
            y = y.copy()
            y[0, 0] = np.inf  # the loss's gradient: inf, then inf * x and inf - inf
        return x, y

    _train(_net("inf_grad"), hvd_ps.GradientPush(mode="sync"), 3, poison)


def _differs(**kw):
    def run(rt):
        import hvd_ps

        args: Dict[str, Any] = dict(kw) if _last_rank() else {}
        tag = args.pop("tag", "same_model" + "_".join(sorted(kw)))
        net = _net(tag, **args)
        trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", dict(OPT))
        trainer.pull_global()  # sets the trainer up, as its first step would (same data)

    return run


def step_before_broadcast(rt):
    shift = 0.5 if _last_rank() else 0.0
    _train(_net("no_broadcast", shift=shift), hvd_ps.ModelAverage(period=1), 1)


def strategy_differs(rt):
    sync = hvd_ps.ModelAverage(period=2 if _last_rank() else 1)
    hvd_ps.broadcast_parameters(_net("sync_differs").collect_params())
    _train(_net("sync_differs"), sync, 1)


def _trainer(sync=None, optimizer: Any = "sgd", params=None, **kw):
    def run(rt):
        import hvd_ps

        net = _net("args")
        opt = optimizer() if callable(optimizer) else optimizer
        hvd_ps.DistributedTrainer(net.collect_params(), opt, params or OPT, sync=sync, **kw)

    return run


def _sgd_object():
    import mxnet as mx

    return mx.optimizer.SGD()


def pull_global_of_other_params(rt):
    net = _net("pg_a")
    trainer = hvd_ps.DistributedTrainer(net.collect_params(), "sgd", dict(OPT))
    trainer.pull_global(_net("pg_b").collect_params())


def _shared_path(tag: str) -> str:
    import horovod.mxnet as hvd

    folder = tempfile.mkdtemp(prefix="hvd_ps-bad-") if hvd.rank() == 0 else None
    folder = hvd.broadcast_object(folder, root_rank=0, name=f"bad_input.dir.{tag}")
    return os.path.join(folder, f"{tag}.hvdps")


def _checkpoint(tag: str, damage: Optional[Callable[[str], None]] = None, **load_kw):
    """Save a 1-step ModelAverage run, optionally ``damage`` the file (rank 0), load it into a
    trainer made with ``load_kw`` (``units``: another model; ``period``; ``stepped``)."""

    def run(rt):
        import horovod.mxnet as hvd

        import hvd_ps

        net = _net(tag)
        hvd_ps.broadcast_parameters(net.collect_params())
        trainer = _train(net, hvd_ps.ModelAverage(period=1), 1)
        path = _shared_path(tag)
        trainer.save_checkpoint(path)
        if damage is not None and hvd.rank() == 0:
            damage(path)
        hvd.broadcast_object(None, root_rank=0, name=f"bad_input.damaged.{tag}")
        units = load_kw.get("units", ref.OUT)
        other = _net(tag, units=units)
        sync = hvd_ps.ModelAverage(period=load_kw.get("period", 1))
        again = hvd_ps.DistributedTrainer(other.collect_params(), "sgd", dict(OPT), sync=sync)
        if load_kw.get("stepped"):
            hvd_ps.broadcast_parameters(other.collect_params())
            again._setup()  # as after a first step
        again.load_checkpoint(path)

    return run


def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"not a checkpoint at all")


def _last_shard(path: str) -> str:
    """The shard of the last group (read by other ranks than rank 0 when there are several)."""
    from hvd_ps import checkpoint

    shard = checkpoint.read_manifest(path)["shards"][-1]
    return os.path.join(os.path.dirname(path), shard["name"])


def _drop_last_shard(path: str) -> None:
    os.unlink(_last_shard(path))


def _flip_last_shard(path: str) -> None:
    """A byte of the last shard's first array, its data (a bit flip the size check misses)."""
    import zipfile

    shard = _last_shard(path)
    with zipfile.ZipFile(shard) as zf:
        info = zf.infolist()[0]
    with open(shard, "r+b") as f:
        f.seek(info.header_offset + 26)  # the local header's name and extra field lengths
        names = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + names + info.compress_size - 1  # the data's last byte
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


RESUME = r"resume with the same setting or start from another checkpoint"

CASES = [
    Case("nan-in-parameters", nan_in_parameters, "NonFiniteError",
         rf"step 2: .*NaN or inf.*: {ADVICE}", r"parameter\(s\) .*'nan_x_weight' \(NaN\)"),
    Case("inf-in-overlapped-snapshot", inf_in_overlapped_snapshot, "NonFiniteError",
         rf"step 2: .*NaN or inf.*: {ADVICE}", r"snapshot.*'inf_overlap_bias' \((NaN|inf)"),
    Case("inf-in-gradients", inf_in_gradients, "NonFiniteError",
         rf"step 2: .*NaN or inf.*: {ADVICE}", r"gradients .*'inf_grad_(weight|bias)'"),
    Case("parameter-shape-differs", _differs(units=ref.OUT + 1), "HvdPsError",
         r"\((6, 3|4,)\) float32 on rank \d+ \(group \d+\) but .* \((5, 3|3,)\) float32 on "
         r"rank 0 \(group 0\): build the same model, in the same order, on every rank", None, 2),
    Case("parameter-name-differs", _differs(tag="renamed"), "HvdPsError",
         r"parameter 'renamed_(bias|weight)' .* but 'same_modeltag_\1' .* on rank 0 \(group 0\): "
         r"build the same model, in the same order", None, 2),
    Case("parameter-dtype-differs", _differs(dtype="float64"), "HvdPsError",
         r"float64 on rank \d+ .* but .* float32 on rank 0 .*: build the same model", None, 2),
    Case("step-before-broadcast", step_before_broadcast, "HvdPsError",
         r"starts with other values .*: call hvd_ps.broadcast_parameters\(params\) .* before "
         r"the first trainer.step", None, 2),
    Case("strategy-differs", strategy_differs, "HvdPsError",
         r"sync strategy differs: ModelAverage\(period=2, overlap=0\) on rank \d+ .*, "
         r"ModelAverage\(period=1, overlap=0\) on rank 0 \(group 0\): pass every rank the "
         r"same sync=", None, 2),
    Case("strategy-as-compression", _trainer(compression=hvd_ps.EASGD(period=2)), "ConfigError",
         r"compression: got a strategy; pass it as sync=..., e.g. DistributedTrainer"),
    Case("bad-compression", _trainer(compression="fp16"), "ConfigError",
         r"compression must be a Horovod compressor such as hvd.Compression.fp16"),
    Case("sync-not-a-strategy", _trainer("easgd"), "ConfigError",
         r"sync must be a strategy such as hvd_ps.EASGD\(...\)"),
    Case("bad-predivide-factor", _trainer(gradient_predivide_factor=0), "ConfigError",
         r"gradient_predivide_factor must be a number > 0"),
    Case("bad-num-groups", _trainer(num_groups=-1), "ConfigError",
         r"num_groups must be an integer >= 0, got .*: Horovod.s grouped allreduces"),
    Case("bad-wire-dtype", _trainer(wire_dtype="bfloat16"), "ConfigError",
         r"wire_dtype must be one of float32, float16, int8, int4, got 'bfloat16'"),
    Case("bad-bucket-mb", _trainer(bucket_mb=-1), "ConfigError",
         r"bucket_mb must be a number >= 0, got -1"),
    Case("gradient-push-optimizer-object", _trainer(hvd_ps.GradientPush(), _sgd_object),
         "ConfigError", r"give it by name \(e.g. 'sgd'\)"),
    Case("gradient-push-optimizer-params",
         _trainer(hvd_ps.GradientPush(), "sgd", {"lr_scheduler": "x"}), "ConfigError",
         r"optimizer_params \['lr_scheduler'\] must be numbers for GradientPush"),
    Case("pull-global-other-params", pull_global_of_other_params, "ConfigError",
         r"params must be this trainer's parameters"),
    Case("checkpoint-of-another-model", _checkpoint("ck_model", units=ref.OUT + 2),
         "CheckpointError", rf"saved with params = .*, this job has .*; {RESUME}"),
    Case("checkpoint-of-another-strategy", _checkpoint("ck_sync", period=3), "CheckpointError",
         rf"strategy = 'ModelAverage\(period=1, overlap=0\)', this job has .*; {RESUME}"),
    Case("checkpoint-torn", _checkpoint("ck_torn", _truncate), "CheckpointError",
         r"is torn or corrupt"),
    Case("checkpoint-foreign", _checkpoint("ck_foreign", _garbage), "CheckpointError",
         r"is torn or corrupt"),
    Case("checkpoint-shard-missing", _checkpoint("ck_shard", _drop_last_shard),
         "CheckpointError", r"shard ck_shard.hvdps.group\d+.[0-9a-f]{16}.npz of .* is missing: "
         r"a checkpoint is its manifest and every shard it lists, in one directory"),
    Case("checkpoint-shard-flipped", _checkpoint("ck_flip", _flip_last_shard),
         "CheckpointError", r"shard ck_flip.hvdps.group\d+.* is torn or corrupt: .*CRC"),
    Case("checkpoint-after-first-step", _checkpoint("ck_late", stepped=True), "CheckpointError",
         r"call it before the trainer's first step"),
]  # fmt: skip


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_on_every_rank(rt, sync_client, case):
    import re

    import horovod.mxnet as hvd

    from hvd_ps import errors

    if hvd.size() < case.min_size:
        pytest.skip(f"needs {case.min_size} ranks")
    got = None
    try:
        case.run(rt)
    except errors.HvdPsError as err:
        got = (type(err).__name__, str(err))
    everyone = hvd.allgather_object(got, name=f"bad_input.{case.name}")  # nobody hangs
    for rank, seen in enumerate(everyone):
        assert seen is not None, f"rank {rank}: {case.name} raised nothing"
        kind, message = seen
        assert kind == case.error, f"rank {rank}: {kind}: {message}"
        assert re.search(case.match, message), f"rank {rank}: {message}"
        if case.leader_match and rank in rt.topo.leader_ranks:
            assert re.search(case.leader_match, message), f"rank {rank}: {message}"
