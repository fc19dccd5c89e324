"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd in a temporary folder.

Debian's ``slurm-wlm`` and ``munge`` (``tools/setup.sh`` installs them as root). Everything the
daemons keep (the munge key, ``slurm.conf``, state, spool, logs) lives in the folder, the
munge socket in a folder of its own (munged wants every folder above its socket open to
all, which pytest's are not), and the ports are free ones, so nothing of the machine's own
set-up is used or changed. The daemons run in the foreground as children of the test
process: they are stopped by their own pids, and every process they started
(``slurmstepd``, the jobs) carries ``SLURM_CONF=<folder>/slurm.conf`` in its environment, so
:meth:`LocalSlurm.stop` can check, by pid, that none is left.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["LocalSlurm", "unavailable", "processes_with", "REQUIRE_ENV", "TERMINAL"]

REQUIRE_ENV = "ANIMALVAE_REQUIRE_SLURM"   # set (by .ci/run): a missing Slurm fails, never skips
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun",
            "sinfo")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

_CONF = """\
ClusterName=animalvae-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait={kill_wait_s}
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str | None:
    """Why a local Slurm cluster cannot run here; None when it can."""
    if not sys.platform.startswith("linux"):
        return "the local Slurm cluster needs Linux"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs its daemons as root (SlurmUser=root)"
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (f"{', '.join(missing)} not found: install slurm-wlm and munge (as root, "
                "make setup does)")
    return None


def processes_with(marker: str) -> list[int]:
    """The pids of live processes whose environment holds ``marker`` (e.g. ``KEY=value``)."""
    found = []
    needle = marker.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:        # gone meanwhile, or not ours to read
            continue
        if needle in environ and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """A one-node Slurm cluster in ``folder``; use as a context manager (or start/stop).

    Parameters
    ----------
    folder : Path
        An empty folder, private to this cluster (root's, mode 0700 as pytest makes them).
    kill_wait_s : int
        Slurm's KillWait: seconds between the SIGTERM of a cancelled job and its SIGKILL.
    """

    def __init__(self, folder: Path, *, kill_wait_s: int = 15):
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.host = socket.gethostname()
        self.kill_wait_s = kill_wait_s
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}
        self.socket_dir: Path | None = None

    # ---------------------------------------------------------------------------------------
    # Start and stop
    # ---------------------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Write the key and ``slurm.conf``, start the three daemons, wait for an idle node."""
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="animalvae-munge-"))
        self.socket_dir.chmod(0o755)          # munged wants its socket's folder open to all
        socket_path = self.socket_dir / "munge.socket"
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(_CONF.format(
            host=self.host, folder=self.folder, socket=socket_path, ctld_port=_free_port(),
            d_port=_free_port(),
            kill_wait_s=self.kill_wait_s, cpus=os.cpu_count() or 1, memory_mb=_memory_mb()))
        munge = self.folder / "munge"
        self._daemon("munged", ["munged", "--foreground",
                                f"--socket={socket_path}",
                                f"--key-file={key}", f"--pid-file={munge}/munged.pid",
                                f"--seed-file={munge}/munged.seed",
                                f"--log-file={self.folder}/log/munged.log"])
        self._wait(socket_path.exists, timeout_s, "munged to open its socket")
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, timeout_s, f"node {self.host} to be idle")

    def _daemon(self, name: str, argv: list[str]) -> None:
        out = (self.folder / "log" / f"{name}.out").open("wb")
        self.daemons[name] = subprocess.Popen(argv, env=self.env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
        out.close()

    def _node_idle(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-n", self.host, "-o", "%T"], env=self.env,
                              capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = {n: p.returncode for n, p in self.daemons.items() if p.poll() is not None}
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no luck in {timeout_s:.0f} s"
                raise RuntimeError(f"waiting for {what}: {why}\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon's log, for a failure message."""
        parts = []
        for path in sorted((self.folder / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons by their pids, and check no process is left.

        Raises
        ------
        RuntimeError
            When a process of this cluster was still running (it is killed first).
        """
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
            deadline = time.monotonic() + self.kill_wait_s + 30
            while self.queue() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        left = processes_with(f"SLURM_CONF={self.conf}")
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        alive = [f"{n} ({p.pid})" for n, p in self.daemons.items() if p.poll() is None]
        if left or alive:
            raise RuntimeError(f"processes of the test cluster were left running: "
                               f"{alive + [str(pid) for pid in left]}")

    # ---------------------------------------------------------------------------------------
    # Jobs
    # ---------------------------------------------------------------------------------------

    def command(self, *argv: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> str:
        """Run a Slurm client command (or a script that calls them) on this cluster; stdout."""
        done = subprocess.run(list(argv), env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit code {done.returncode}\n{done.stderr}")
        return done.stdout

    def queue(self) -> list[str]:
        """The ids of the jobs still pending or running (array tasks as ``J_K``)."""
        return self.command("squeue", "-h", "-r", "-o", "%i").split()

    def job_states(self, job_id: str) -> dict[str, tuple[str, str]]:
        """``{task: (state, exit code)}`` of a job (an array's tasks by their index)."""
        text = self.command("scontrol", "-o", "show", "job", job_id)
        states = {}
        for line in text.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = fields.get("ArrayTaskId") or fields["JobId"]
            states[task] = (fields["JobState"], fields.get("ExitCode", ""))
        return states

    def wait(self, *job_ids: str, timeout_s: float = 300.0) -> dict[str, dict[str, tuple]]:
        """Wait until every task of the jobs has ended; their states (see :meth:`job_states`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {j: self.job_states(j) for j in job_ids}
            if all(s[0] in TERMINAL for tasks in states.values() for s in tasks.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still running after {timeout_s:.0f} s: {states}\n"
                                   f"{self.log_tails()}")
            time.sleep(0.5)
