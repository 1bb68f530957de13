"""scripts/install_system_deps.sh waits for another apt (unattended-upgrades, a second install) that
holds the package lists' or dpkg's lock, instead of failing `make` at once. A fake apt-get on PATH
plays the apt that finds the lock taken."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_APT = """#!/usr/bin/env bash
echo "$*" >> "$LOG"
if [[ " $* " == *" update "* ]]; then
  n=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$COUNT"
  # apt 2.6: `update` does not honour DPkg::Lock::Timeout for the lists lock; it fails at once
  if [ "$n" -lt 2 ]; then echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1 (apt-get)" >&2; exit 100; fi
  exit 0
fi
# install: waits for the dpkg frontend lock only when asked to
[[ "$*" == *"DPkg::Lock::Timeout="* ]] || { echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2; exit 100; }
exit 0
"""


def test_it_waits_for_another_apt_holding_the_locks(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "id").write_text("#!/usr/bin/env bash\necho 0\n")  # as root, whoever runs the test
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "apt.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "COUNT": str(tmp_path / "count"),
           "LAKE_SYSTEM_DEPS_FORCE": "1", "LAKE_APT_RETRY_SECONDS": "0", "LAKE_APT_LOCK_TIMEOUT": "30"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "install_system_deps.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[-2:] for c in calls[:3]] == [["update", "-qq"]] * 3  # retried while the lists' lock was held
    assert "waiting" in out.stderr
    [install] = [c for c in calls if " install " in f" {c} "]
    assert "-o DPkg::Lock::Timeout=30" in install and "libpostgresql-jdbc-java" in install


def test_it_gives_up_on_other_apt_errors(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text("#!/usr/bin/env bash\necho 'E: The repository is not signed' >&2\nexit 100\n")
    (bin_dir / "id").write_text("#!/usr/bin/env bash\necho 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LAKE_SYSTEM_DEPS_FORCE": "1", "LAKE_APT_RETRY_SECONDS": "0"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "install_system_deps.sh")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "not signed" in out.stderr
