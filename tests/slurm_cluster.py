"""A one-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and for trying
docs/scale-out.md's recipe by hand.

It runs Debian's `slurm-wlm` (22.05) and `munge` as root: munged, slurmctld and slurmd on localhost, each in the
foreground as a child process started here (stopped by PID), with every file (config, key, state, logs, the
munge socket) in one folder and ports picked free, so it touches nothing of a system-wide SLURM or munge and two
clusters can run side by side. Jobs run as root in the cluster's one partition `debug`.

    sudo apt-get install slurm-wlm munge                       # once (about 40 s)
    sudo python tests/slurm_cluster.py start /tmp/satlab-slurm   # prints the line to export
    export SLURM_CONF=/tmp/satlab-slurm/slurm.conf
    sinfo; satlab -m ... hydra/launcher=submitit_slurm ...       # the recipe of docs/scale-out.md
    sudo python tests/slurm_cluster.py stop /tmp/satlab-slurm    # cancels the jobs, stops the daemons

Settings (slurm.conf): `ProctrackType=proctrack/linuxproc`, `TaskPlugin=task/none` (no cgroups needed),
`SelectType=select/cons_tres` with CPUs as the consumable resource, no accounting (`sacct` answers from the
controller), `KillWait=2` (a cancelled or requeued job gets SIGTERM, then SIGKILL 2 s later; submitit lets its
jobs run on after SIGTERM).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sacct")
PACKAGES = "slurm-wlm munge"


def why_not() -> str | None:
    """Why a cluster cannot start here (None: it can): not root, or the programs are missing."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the one-node SLURM cluster runs its daemons as root; run the tests as root"
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install {PACKAGES}"
    return None


def program(name: str) -> str:
    """The path of a SLURM or munge program (the daemons live in /usr/sbin, often not on a user's PATH)."""
    return shutil.which(name) or str(Path("/usr/sbin", name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    """A running cluster: its folder, config file, daemon PIDs, and the environment its commands need."""

    root: Path
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster (sbatch, squeue, submitit read it)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """A SLURM command (`squeue`, `scontrol`, ...) against this cluster; its stdout."""
        done = subprocess.run([program(args[0]), *args[1:]], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def version(self) -> str:
        return self.run("sinfo", "--version").strip()

    def jobs(self) -> list[str]:
        """The ids of the jobs the controller knows that have not ended (array tasks as <job>_<task>)."""
        return self.run("squeue", "-h", "-o", "%i").split()


def slurm_conf(root: Path, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName=satlab
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _daemon(root: Path, name: str, args: list[str]) -> int:
    log = open(root / f"{name}.out", "ab")
    proc = subprocess.Popen([program(name), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=root)
    log.close()
    return proc.pid


def _wait(what: str, ready, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    logs = "; ".join(f"{p.name}: {p.read_text(errors='replace')[-800:]}" for p in sorted(root.glob("*.out")))
    raise RuntimeError(f"the SLURM cluster in {root}: {what} did not come up within {timeout:.0f} s ({logs})")


def start(root: str | Path) -> Cluster:
    """Start munged, slurmctld and slurmd with everything in `root` (created; emptied if it held a cluster),
    and wait until the node takes jobs. Raises RuntimeError (with the daemons' logs) when it does not."""
    reason = why_not()
    if reason:
        raise RuntimeError(reason)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    for sub in ("state", "spool"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir()
    cluster = Cluster(root)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    cluster.conf.write_text(slurm_conf(root, free_port(), free_port(), os.cpu_count() or 1, memory_mb))
    try:
        cluster.pids["munged"] = _daemon(root, "munged", [
            "-F", "--force", f"--socket={root / 'munge.socket'}", f"--key-file={key}",
            f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
            f"--seed-file={root / 'munged.seed'}"])
        _wait("munged", lambda: (root / "munge.socket").exists(), root)
        env = cluster.env
        cluster.pids["slurmctld"] = _daemon(root, "slurmctld", ["-D", "-i", "-f", str(cluster.conf)])
        cluster.pids["slurmd"] = _daemon(root, "slurmd", ["-D", "-f", str(cluster.conf)])
        save(cluster)

        def idle() -> bool:
            done = subprocess.run([program("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc")

        _wait("the node", idle, root)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def save(cluster: Cluster) -> None:
    (cluster.root / "pids.json").write_text(json.dumps(cluster.pids))


def load(root: str | Path) -> Cluster:
    root = Path(root).resolve()
    pids = json.loads((root / "pids.json").read_text()) if (root / "pids.json").exists() else {}
    return Cluster(root, pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process: reap it
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return ""


def stop(cluster: Cluster, timeout: float = 30) -> None:
    """Cancel the cluster's jobs (their processes end: SIGTERM, then SIGKILL after KillWait), then stop slurmd,
    slurmctld and munged by their PIDs (SIGTERM, SIGKILL after `timeout` s). The folder is left (logs)."""
    if cluster.pids.get("slurmctld") and _alive(cluster.pids["slurmctld"]):
        try:
            if cluster.jobs():
                cluster.run("scancel", "--full", "--user=root", check=False)
                deadline = time.monotonic() + timeout
                while cluster.jobs() and time.monotonic() < deadline:
                    time.sleep(0.5)
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
    for name in ("slurmd", "slurmctld", "munged"):
        pid = cluster.pids.get(name)
        if not pid or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    cluster.pids.clear()
    save(cluster)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/slurm_cluster.py start|stop FOLDER", file=sys.stderr)
        return 2
    command, root = argv
    if command == "start":
        cluster = start(root)
        print(f"{cluster.version()}: one node, partition debug; daemons {cluster.pids}; logs in {cluster.root}")
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        stop(load(root))
        print(f"stopped the SLURM cluster of {Path(root).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
