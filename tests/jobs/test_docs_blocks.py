"""Every fenced code block of README.md and docs/*.md is accounted for.

A block a reader may copy must be known to work. The inventory below says, for each block,
how:

* shell blocks (``bash``, ``sh``), command by command (a command is a logical line: comments
  dropped, ``\\`` continuations joined):

  - ``Runs(test)``: a test in this file runs the whole block as written (cheap enough here);
  - ``Cheap(expect)``: this file runs the command as written and looks for ``expect`` in
    what it prints;
  - ``Covered(test file, test, evidence)``: an existing test runs that command; the test file
    must define the test and contain every ``evidence`` text (the command's own words as the
    test spells them), so the mapping breaks when the test stops running it;
  - ``Long(why)``: too long for the suite (root, minutes); every ``--flag`` it uses must be
    one the program's ``--help`` lists;
  - ``Suite(why)``: ``bash scripts/test.sh``, the suite this test runs inside; ``bash -n``
    checks it parses.

* Python and diff blocks, whole: ``Covered`` as above, or ``Fragment(why)``: a piece of a
  program (the reader's own names around it), which must parse and may use only names that
  ``hvd_ps`` exports and methods that ``DistributedTrainer`` defines.

* ``text`` blocks are output or pictures: exempt.

A block or command missing from the inventory fails the test with its file and text: add it
here, with the test that runs it.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import job_run  # tests/job_run.py
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh")
TIMEOUT = 120  # seconds for one block's run


@dataclass(frozen=True)
class Runs:
    test: str  # the test function in this file that runs the whole block


@dataclass(frozen=True)
class Cheap:
    expect: str  # text the command's output must contain


@dataclass(frozen=True)
class Covered:
    file: str  # a test file's name, anywhere under tests/
    test: str  # the test function in it
    evidence: Tuple[str, ...]  # texts the test file must contain


@dataclass(frozen=True)
class Long:
    why: str


@dataclass(frozen=True)
class Suite:
    why: str


@dataclass(frozen=True)
class Fragment:
    why: str


Entry = Union[Runs, Cheap, Covered, Long, Suite, Fragment]

STRAGGLER = (  # test_stragglers.py's command, as it spells it
    'job_run.launcher(\n        "-np", "2", "--group-size", "1",',
    '("--sync", "easgd", "--mode", "async", "--slowdown", "5")',
    '"--slow-group", "1"',
    '"--max-staleness", "1"',
    "EPOCHS, PERIOD, TIMEOUT = 6, 4, 150",
)
MIGRATION = ('"docs/migrating.md",',)  # test_migration.py reads its blocks from there
MIGRATION_TORCH = ('"docs/migrating-torch.md",',)
TORCH_EXAMPLE = (
    'HOROVODRUN, "-np", str(RANKS)',
    '"--group-size", str(GROUP_SIZE)',
    "RANKS, GROUP_SIZE",
)
INSTALL = ('GUIDE = "docs/install.md"', "block()")  # test_install.py runs the page's block
LAUNCH_HOSTS_CMD = (
    '"hvdps-run", "-np", "4", "-H", "hostA:2,hostB:2"',
    '"--ps-host", cluster.hosts["a"]["addr"], "--network-interfaces", "hvps0"',
    '["--num-servers", "2"]',
)

#: shell commands, as normalised by commands() below
COMMANDS: Dict[str, Entry] = {
    # README.md: the two set-up commands
    "bash scripts/demo.sh": Covered(
        "test_demo_output.py",
        "test_demo_output_is_whole_prefixed_lines",
        ('["bash", str(ROOT / "scripts" / "demo.sh"), "--epochs"',),  # fewer epochs
    ),
    "bash scripts/test.sh": Suite("the whole suite, which runs this test"),
    # docs/index.md
    "mkdocs build --strict": Covered(
        "test_docs_build.py",
        "test_mkdocs_build_strict",
        ('"mkdocs", "build", "--strict", "--site-dir"',),  # the site into a temporary dir
    ),
    # docs/install.md: the whole block, in a fresh virtualenv
    "pip install numpy==1.23.5 mxnet==1.9.1 mpi4py==4.1.2 cmake==3.31.10 setuptools==65.5.0 "
    "wheel==0.48.0": Covered("test_install.py", "test_install_into_a_fresh_environment", INSTALL),
    "pip download --no-deps --no-binary :all: horovod==0.28.1": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    "tar -xzf horovod-0.28.1.tar.gz": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    "python /path/to/hvd_ps/scripts/patch_horovod.py horovod-0.28.1": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    "HOROVOD_WITH_MXNET=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 "
    "HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_GLOO=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 pip "
    "install --no-build-isolation ./horovod-0.28.1": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    "pip install --no-build-isolation /path/to/hvd_ps": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    "python -c import hvd_ps; print(hvd_ps.FusedBuffer.__name__, 'loaded')": Covered(
        "test_install.py", "test_install_into_a_fresh_environment", INSTALL
    ),
    # docs/launching.md (and docs/install.md)
    "hvdps-run --help": Cheap("usage: hvdps-run"),
    "hvdps-run --servers-only --num-workers 2 > tier.env &": Runs("test_shared_tier_block"),
    "until grep -q ^# and in each job tier.env; do sleep 1; done; eval $(cat tier.env)": Runs(
        "test_shared_tier_block"
    ),
    "HVD_PS_GROUP_OFFSET=0 horovodrun -np 2 python examples/train_digits.py --group-size 2 &": (
        Runs("test_shared_tier_block")
    ),
    "HVD_PS_GROUP_OFFSET=1 horovodrun -np 2 python examples/train_digits.py --group-size 2": (
        Runs("test_shared_tier_block")
    ),
    # docs/security.md: a secret file of one's own, a tier that uses it
    "head -c 32 /dev/urandom | od -An -tx1 | tr -d  \\n > tier.secret && chmod 600 "
    "tier.secret": Covered(
        "test_shared_tier.py",
        "test_a_tier_with_its_own_secret_file_admits_only_jobs_that_hold_it",
        ("MAKE_SECRET", "head -c 32 /dev/urandom | od -An -tx1 | tr -d"),
    ),
    "hvdps-run --servers-only --num-workers 2 --secret-file tier.secret > tier.env &": Covered(
        "test_shared_tier.py",
        "test_a_tier_with_its_own_secret_file_admits_only_jobs_that_hold_it",
        ('"--servers-only"', '"--secret-file"'),
    ),
    # docs/machines.md: two hosts, emulated by the test (its interface and address for eth1
    # and 10.0.0.1); needs root
    "export OMPI_MCA_oob_tcp_if_include=eth1": Covered(
        "test_launch_hosts.py",
        "test_servers_on_both_hosts_grouping_in_the_script",
        ('OMPI_MCA_oob_tcp_if_include="hvps0"',),
    ),
    "hvdps-run -np 4 -H hostA:2,hostB:2 --ps-host 10.0.0.1 --network-interfaces eth1 "
    "--num-servers 2 python train.py": Covered(
        "test_launch_hosts.py",
        "test_servers_on_both_hosts_grouping_in_the_script",
        LAUNCH_HOSTS_CMD,
    ),
    # docs/stragglers.md
    "hvdps-run -np 2 --group-size 1 python examples/train_digits.py --sync easgd --mode async "
    "--period 4 --max-staleness 1 --slow-group 1 --slowdown 5 --epochs 6 --json "
    "straggler.json": Covered(
        "test_stragglers.py",
        "test_a_bounded_straggler_run_holds_the_bound_and_loses_nothing",
        STRAGGLER,
    ),
    # docs/migrating.md
    "OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_horovod.py": Covered(
        "test_migration.py", "test_guide_command_trains", MIGRATION
    ),
    "OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_hvd_ps.py": Covered(
        "test_migration.py", "test_guide_command_trains", MIGRATION
    ),
    # docs/migrating-torch.md
    "OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_torch_horovod.py": Covered(
        "test_migration.py", "test_guide_command_trains", MIGRATION_TORCH
    ),
    "OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_torch_hvd_ps.py": Covered(
        "test_migration.py", "test_guide_command_trains", MIGRATION_TORCH
    ),
    # docs/torch.md
    "OMP_NUM_THREADS=1 horovodrun -np 4 python examples/train_digits_torch.py --group-size 2": (
        Covered(
            "test_digits_torch.py",
            "test_the_torch_example_reaches_93_percent",
            TORCH_EXAMPLE,
        )
    ),
    # docs/mxnet-tools.md
    "export DMLC_PS_ROOT_URI=127.0.0.1 DMLC_PS_ROOT_PORT=9091 DMLC_NUM_SERVER=2 "
    "DMLC_NUM_WORKER=2": Runs("test_stock_workers_block"),
    "export DMLC_NODE_HOST=127.0.0.1": Runs("test_stock_workers_block"),
    "DMLC_ROLE=scheduler python -m hvd_ps.server &": Runs("test_stock_workers_block"),
    "DMLC_ROLE=server python -m hvd_ps.server &": Runs("test_stock_workers_block"),
    "DMLC_ROLE=worker python train.py &": Runs("test_stock_workers_block"),
    "DMLC_ROLE=worker python train.py": Runs("test_stock_workers_block"),
    # docs/performance.md
    "python -m benchmarks.cluster_suite": Long("every method on emulated clusters: root, minutes"),
    "python -m benchmarks.cluster_suite --estimate 0.7 15": Cheap("min by the model"),
    "python -m benchmarks.cluster_suite --clusters 2x2 --links 1gbit --hidden 256,256 --steps 4 "
    "--slow-steps 2 --period 2 --overlap 1 --no-accuracy --out /tmp/smoke": Long(
        "a smoke run on an emulated cluster: root, minutes"
    ),
}

#: Python and diff blocks, by (file, first line)
BLOCKS: Dict[Tuple[str, str], Entry] = {
    ("README.md", "import hvd_ps"): Fragment(
        "the quick start; the loop's data and model are yours"
    ),
    ("docs/using.md", "import mxnet as mx"): Fragment("a training script around your model"),
    ("docs/stragglers.md", 'sync = hvd_ps.DiLoCo(period=16, mode="async", max_staleness=2)'): (
        Fragment("three strategies with a bound; the trainer around them is yours")
    ),
    (
        "docs/stragglers.md",
        'sync = hvd_ps.DiLoCo(period="auto", max_period=16, min_period=2, mode="async")',
    ): Fragment("two strategies with speed-adaptive periods; the trainer around them is yours"),
    ("docs/stragglers.md", "sync = hvd_ps.DiLoCo(period=16, quorum=3, grace=0.5)"): Fragment(
        "two strategies with a quorum; the trainer around them is yours"
    ),
    ("docs/using.md", "if hvd.rank() == 0:"): Covered(
        "test_strategies.py",
        "test_global_model_on_a_leader_alone_needs_no_collective",
        ("with trainer.global_model(local=True):",),
    ),
    (
        "docs/checkpoints.md",
        "trainer = hvd_ps.DistributedTrainer(net.collect_params(), 'sgd', {...}, "
        "sync=hvd_ps.DiLoCo(16))",
    ): Fragment("save and resume inside your loop"),
    (
        "docs/wire.md",
        'trainer = hvd_ps.DistributedTrainer(params, "sgd", {"learning_rate": 0.1},',
    ): Fragment("choosing the wire; the parameters are yours"),
    ("docs/checkpoints.md", "with zipfile.ZipFile(path) as zf:"): Fragment(
        "reading a checkpoint's manifest by hand; path is yours"
    ),
    (
        "docs/migrating.md",
        '"""An MLP on scikit-learn\'s digits under horovodrun (README: "Migrating from '
        'horovod.mxnet")."""',
    ): Covered("test_migration.py", "test_guide_shows_the_plain_script", MIGRATION),
    ("docs/migrating.md", "--- examples/train_digits_horovod.py"): Covered(
        "test_migration.py", "test_guide_diff_is_the_diff", MIGRATION
    ),
    (
        "docs/migrating-torch.md",
        '"""An MLP on digits in PyTorch under horovodrun (docs: "Migrating from '
        'horovod.torch")."""',
    ): Covered("test_migration.py", "test_guide_shows_the_plain_script", MIGRATION_TORCH),
    ("docs/migrating-torch.md", "--- examples/train_digits_torch_horovod.py"): Covered(
        "test_migration.py", "test_guide_diff_is_the_diff", MIGRATION_TORCH
    ),
    ("README.md", "import torch"): Fragment("the PyTorch quick start; data and model are yours"),
    ("docs/torch.md", "import torch"): Fragment("a training script around your model"),
}

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    flags=re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    file: str
    lang: str
    body: str

    @property
    def first(self) -> str:
        return self.body.splitlines()[0].strip() if self.body.strip() else ""


def blocks() -> List[Block]:
    found = []
    for path in DOCS:
        for m in FENCE.finditer(path.read_text()):
            body = "".join(
                line[len(m.group("indent")) :] + "\n" for line in m.group("body").splitlines()
            )
            found.append(Block(str(path.relative_to(ROOT)), m.group("lang"), body))
    return found


def commands(body: str) -> List[str]:
    """The block's commands: logical lines, comments dropped, words joined by one space."""
    out, current = [], ""
    for line in body.splitlines():
        s = line.strip()
        if not current and (not s or s.startswith("#")):
            continue
        if s.endswith("\\"):
            current += s[:-1] + " "
            continue
        out.append(" ".join(shlex.split(current + s, comments=True)))
        current = ""
    return out


def block_of(file: str, first: str) -> Block:
    found = [
        b
        for b in blocks()
        if b.file == file
        and (b.first == first or (b.lang in SHELL and commands(b.body)[:1] == [first]))
    ]
    assert len(found) == 1, f"{file}: expected one block starting {first!r}, found {len(found)}"
    return found[0]


def find_test_file(name: str) -> Path:
    found = [p for p in (ROOT / "tests").rglob(name) if "__pycache__" not in p.parts]
    assert len(found) == 1, f"test file {name} under tests/: found {found}"
    return found[0]


# -- the inventory is complete and true ---------------------------------------------------------


def test_every_block_is_accounted_for() -> None:
    missing = []
    for b in blocks():
        if b.lang == "text":
            continue
        if b.lang in SHELL:
            missing += [f"{b.file}: {c!r}" for c in commands(b.body) if c not in COMMANDS]
        elif b.lang in ("python", "diff"):
            if (b.file, b.first) not in BLOCKS:
                missing.append(f"{b.file}: {b.lang} block {b.first!r}")
        else:
            missing.append(f"{b.file}: a {b.lang or 'plain'} block {b.first!r} (tag it: text, "
                           "bash, sh, python or diff)")  # fmt: skip
    assert not missing, (
        "code blocks that no test runs and that are not marked as output (```text): add each "
        "to the inventory in tests/jobs/test_docs_blocks.py with the test that runs it:\n"
        + "\n".join(missing)
    )


def test_inventory_has_no_stale_entries() -> None:
    shown = {c for b in blocks() if b.lang in SHELL for c in commands(b.body)}
    firsts = {(b.file, b.first) for b in blocks() if b.lang not in SHELL}
    stale = [c for c in COMMANDS if c not in shown] + [str(k) for k in BLOCKS if k not in firsts]
    assert not stale, f"inventory entries whose block is gone from the docs: {stale}"


def test_runs_entries_name_tests_here() -> None:
    here = Path(__file__).read_text()
    for cmd, entry in COMMANDS.items():
        if isinstance(entry, Runs):
            assert f"def {entry.test}(" in here, f"{cmd!r}: no test {entry.test} in this file"


@pytest.mark.parametrize(
    "entry",
    sorted(
        {e for e in [*COMMANDS.values(), *BLOCKS.values()] if isinstance(e, Covered)},
        key=repr,
    ),
    ids=lambda e: f"{e.file}::{e.test}",
)
def test_covering_test_runs_it(entry: Covered) -> None:
    text = find_test_file(entry.file).read_text()
    assert re.search(rf"^(async )?def {entry.test}\(", text, flags=re.M), (
        f"{entry.file} has no test {entry.test}"
    )
    for evidence in entry.evidence:
        assert evidence in text, f"{entry.file} no longer contains {evidence!r}"


# -- Python fragments ---------------------------------------------------------------------------


def _public_names(module: str = "__init__") -> Dict[str, str]:
    """The public names of ``hvd_ps`` (or of ``hvd_ps.torch``: ``module="torch"``)."""
    tree = ast.parse((ROOT / "hvd_ps" / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "_PUBLIC":
            return ast.literal_eval(node.value)
    raise AssertionError(f"hvd_ps/{module}.py has no _PUBLIC map")


def _optimizer_members() -> set:
    """What hvd_ps.torch's DistributedOptimizer adds to a torch optimizer, and torch's own."""
    tree = ast.parse((ROOT / "hvd_ps" / "train" / "torch.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "_Methods":
            mine = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            return mine | {"zero_grad", "state_dict", "load_state_dict", "param_groups"}
    raise AssertionError("no class _Methods in hvd_ps/train/torch.py")


def _trainer_members() -> set:
    module = _public_names()["DistributedTrainer"].replace(".", "/")
    tree = ast.parse((ROOT / "hvd_ps" / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "DistributedTrainer":
            return {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    raise AssertionError("no class DistributedTrainer")


@pytest.mark.parametrize(
    "key", [k for k, e in BLOCKS.items() if isinstance(e, Fragment)], ids=lambda k: k[0]
)
def test_fragment_parses_and_uses_real_names(key: Tuple[str, str]) -> None:
    block = block_of(*key)
    tree = ast.parse(block.body, filename=f"{key[0]} block {key[1]!r}")
    public, members = set(_public_names()), _trainer_members()
    torch_public, optimizer = set(_public_names("torch")), _optimizer_members()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "hvd_ps":
                assert node.attr in public, f"{key[0]}: hvd_ps.{node.attr} is not exported"
            if node.value.id == "hps":
                assert node.attr in torch_public, f"{key[0]}: hps.{node.attr} is not exported"
            if node.value.id == "optimizer":
                assert node.attr in optimizer, f"{key[0]}: the optimizer has no {node.attr}"
            if node.value.id == "trainer":
                assert node.attr in members, (
                    f"{key[0]}: DistributedTrainer has no member {node.attr}"
                )


# -- commands run here --------------------------------------------------------------------------


def _env(**extra: str) -> dict:
    return job_run.env(f"docs-{uuid.uuid4().hex}", **extra)


@pytest.mark.parametrize(
    "cmd", [c for c, e in COMMANDS.items() if isinstance(e, Cheap)], ids=lambda c: c[:40]
)
def test_cheap_command(cmd: str) -> None:
    entry = COMMANDS[cmd]
    assert isinstance(entry, Cheap)
    proc = job_run.run(["bash", "-c", cmd], _env(), 60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{out[-3000:]}"
    assert entry.expect in out, f"{cmd}: no {entry.expect!r} in its output\n{out[-3000:]}"


@pytest.mark.parametrize(
    "cmd", [c for c, e in COMMANDS.items() if isinstance(e, Long)], ids=lambda c: c[:40]
)
def test_long_command_flags_exist(cmd: str) -> None:
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], cmd
    proc = subprocess.run(
        [sys.executable, "-m", words[2], "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flag in (w for w in words[3:] if w.startswith("--")):
        assert flag in proc.stdout, f"{cmd}: {flag} is not among {words[2]}'s flags"


def test_suite_command_parses() -> None:
    for cmd, entry in COMMANDS.items():
        if isinstance(entry, Suite):
            script = shlex.split(cmd)[1]
            proc = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 0, f"bash -n {script}: {proc.stderr}"


def _run_block(block: Block, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The block as written, then ``wait`` for what it left in the background."""
    script = cwd / "block.sh"
    script.write_text("set -e\n" + block.body + "wait\n")
    proc = job_run.run(["bash", str(script)], _env(**env), TIMEOUT, cwd=cwd)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, (
        f"{block.file} block {block.first!r}: exit {proc.returncode}\n{tail}"
    )
    return proc


def test_shared_tier_block(tmp_path: Path) -> None:
    """docs/launching.md: a --servers-only tier and two jobs of one group each, run from a
    directory that has the repository's examples/ (tier.env is written there)."""
    block = block_of("docs/launching.md", "hvdps-run --servers-only --num-workers 2 > tier.env &")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    proc = _run_block(block, tmp_path)
    finals = re.findall(
        r"final test accuracy \(global model\): (\d+\.\d\d)%", proc.stdout, flags=re.M
    )
    assert len(finals) == 2, proc.stdout[-3000:]  # one per job
    assert all(float(a) >= 90.0 for a in finals), finals
    # each job labels its group with the group's global id on the tier: 0 and 1, not 0 twice
    labels = set(re.findall(r"\| group (\d+): loss", proc.stdout))
    assert labels == {"0", "1"}, proc.stdout[-3000:]


STOCK_FIRST = (
    "export DMLC_PS_ROOT_URI=127.0.0.1 DMLC_PS_ROOT_PORT=9091 DMLC_NUM_SERVER=2 DMLC_NUM_WORKER=2"
)
STOCK_WORKER = """\
import mxnet as mx

kv = mx.kv.create("dist_sync")
kv.init(0, mx.nd.zeros((4,)))
kv.push(0, mx.nd.ones((4,)) * (kv.rank + 1))
out = mx.nd.zeros((4,))
kv.pull(0, out=out)
print(f"worker {kv.rank}: pulled {out.asnumpy().tolist()}", flush=True)
"""


def test_stock_workers_block(tmp_path: Path) -> None:
    """docs/mxnet-tools.md: hvd_ps's scheduler and servers under MXNet's launch environment,
    with a stock dist_sync script as train.py: with no optimizer a sync server stores the sum
    of the round's pushes, 1 + 2."""
    block = block_of("docs/mxnet-tools.md", STOCK_FIRST)
    (tmp_path / "train.py").write_text(STOCK_WORKER)
    proc = _run_block(block, tmp_path)
    # two processes write to one pipe: their lines may interleave
    pulled = sorted(re.findall(r"worker (\d): pulled (\[[^\]]*\])", proc.stdout))
    assert pulled == [("0", "[3.0, 3.0, 3.0, 3.0]"), ("1", "[3.0, 3.0, 3.0, 3.0]")], proc.stdout


def test_no_pointers_outside_the_repository() -> None:
    """The docs point at nothing outside the repository that readers cannot see: every
    relative link, and every ``../`` path they mention, resolves inside the checkout."""
    for path in [*DOCS, ROOT / "mkdocs.yml"]:
        text = path.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)", text)  # markdown links
        targets += re.findall(r"(?<![\w/.])((?:\.\./)+[\w./-]*)", text)  # ../ paths
        for target in targets:
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            where = (path.parent / target).resolve()
            assert where == ROOT or ROOT in where.parents, (
                f"{path.relative_to(ROOT)} points outside the repository: {target}"
            )
