"""Ctrl-C: one line saying what was kept and that rerunning resumes, exit code 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_during_csi_says_what_was_kept(tmp_path):
    """Interrupt while the downstream set is being featurised: the finished upstream statistics stay cached."""
    out = tmp_path / "run"
    args = ["csi", "-u", "acac=bundled:acac,n_samples=6", "-d", "eth=bundled:ethanol,n_samples=1000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomsift.cli", *args, "--bootstrap", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seen = b""
    deadline = time.monotonic() + 240
    while b"features downstream:eth" not in seen:  # tqdm's first line for the downstream set
        chunk = proc.stderr.read1(4096)
        assert chunk and time.monotonic() < deadline, seen.decode(errors="replace")
        seen += chunk
    # Python drops a KeyboardInterrupt raised inside a __del__ or callback: press again, soon enough that the
    # downstream stage (5-15 s here) is still running (a 6 s wait once let it finish first and fail the test)
    for _ in range(8):
        proc.send_signal(signal.SIGINT)
        try:
            out_bytes, err = proc.communicate(timeout=2)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        out_bytes, err = proc.communicate()
    stderr = (seen + err).decode(errors="replace")
    assert proc.returncode == 130, (out_bytes.decode(errors="replace"), stderr)
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, stderr
    assert str(out / "cache") in lines[0] and "rerun the same command to resume" in lines[0]
    assert "Traceback" not in stderr
    kept = sorted(p.name for p in (out / "cache").glob("*.npz"))
    # the first dataset's statistics and its measure data, nothing of the interrupted second one
    assert len(kept) == 2 and all(k.startswith("upstream-acac") for k in kept), kept
