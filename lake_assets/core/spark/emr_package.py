"""The Spark merge job's Python environment for EMR Serverless: build it, publish it with the job script.

    python -m lake_assets.core.spark.emr_package build   [--arch x86_64|arm64|host] [--out DIR]
    python -m lake_assets.core.spark.emr_package publish [--arch ...] [--archive PATH]
                                                         [--environment-uri s3://...] [--script-uri s3://...]

`build` resolves the packages the job imports (`JOB_PACKAGES`, pinned from pyproject.toml) as
binary wheels for EMR's platform (`pip install --target --platform manylinux..._x86_64|aarch64
--python-version 3.11 --only-binary=:all:`: nothing is compiled, and a package with no wheel for
the platform fails the build naming it), adds this project's own package (a wheel built from a copy
of the sources), and packs a venv-style archive:

    bin/python                           launcher: this archive's site-packages on the image's Python 3.11
    lib/python3.11/site-packages/...     the job's packages and lake_assets
    lake-environment.json                what is inside (platform, Python, pinned requirements)

EMR unpacks it as `./environment` (`spark.archives=<uri>#environment`) and runs the driver and the
executors with `./environment/bin/python` (`JOB_PYTHON`, what `resources.spark.EmrServerless` puts
into the job's Spark conf). pyspark is not packed: EMR's Spark provides it. The launcher runs the
interpreter named at build time (`--interpreter`, default `python3.11`): EMR Serverless release
images ship an older system Python, so the application needs an image with Python 3.11 (a custom
image adding it) or the interpreter given by path.

`publish` uploads the archive to `LAKE_EMR_ENVIRONMENT_URI` and the job script to
`LAKE_EMR_SCRIPT_URI` (settings, or the flags), building the archive first unless one is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from lake_assets.core.spark.conf import merge_job_script

COMMAND = "python -m lake_assets.core.spark.emr_package"
PYTHON_VERSION = "3.11"  # the interpreter the job runs on (pyproject's requires-python floor)
ENVIRONMENT_DIR = "environment"  # where spark.archives unpacks the archive on EMR (`<uri>#environment`)
JOB_PYTHON = f"./{ENVIRONMENT_DIR}/bin/python"  # PYSPARK_PYTHON on the driver and executors
SITE_PACKAGES = f"lib/python{PYTHON_VERSION}/site-packages"
MANIFEST = "lake-environment.json"
# EMR 7.x images are Amazon Linux 2023 (glibc 2.34): every manylinux tag up to 2_34 loads there.
GLIBC_MAX_MINOR = 34
ARCHES = {"x86_64": "x86_64", "arm64": "aarch64"}  # EMR Serverless `architecture` -> wheel platform tag
# What the job imports (merge_job.py and the CDC core under it), with the extras it uses; versions
# come from pyproject.toml. Not pyspark (EMR's Spark has it), not dagster (the job only speaks Pipes).
JOB_PACKAGES: dict[str, tuple[str, ...]] = {
    "pyiceberg": ("glue", "pyarrow"),  # the Glue catalog and Arrow I/O on the driver
    "pyiceberg-core": (),  # writes transform-partitioned tables
    "pyarrow": (),
    "duckdb": (),  # the shared pipeline's winners and outcomes
    "pydantic": (),
    "pyyaml": (),  # the registry's config types
    "boto3": (),  # spec and result documents on S3, the S3 landing zone
    "botocore": (),
    "dagster-pipes": (),  # logs and the result back to the Dagster run, through CloudWatch
}
REPO_ROOT = Path(__file__).resolve().parents[3]
PROJECT_SOURCES = ("pyproject.toml", "lake_assets", "resources")  # what a wheel of this project is built from


class PackageError(RuntimeError):
    """The environment could not be built or published; the message says what is missing."""


@dataclass(frozen=True)
class Target:
    """The platform the archive is built for: EMR's x86_64 or arm64, or this machine (`host`, for tests)."""

    arch: str = "x86_64"

    def __post_init__(self) -> None:
        if self.arch not in (*ARCHES, "host"):
            raise PackageError(f"--arch must be one of {', '.join([*ARCHES, 'host'])}, not {self.arch!r}")

    def platforms(self) -> list[str]:
        if self.arch == "host":
            return []
        machine = ARCHES[self.arch]
        return ["manylinux2014_" + machine] + [f"manylinux_2_{m}_{machine}" for m in range(17, GLIBC_MAX_MINOR + 1)]

    def pip_platform_args(self) -> list[str]:
        """pip's flags for foreign wheels; the host build resolves for the running interpreter."""
        if self.arch == "host":
            return ["--only-binary=:all:"]
        args = [f"--platform={p}" for p in self.platforms()]
        return [*args, "--implementation=cp", f"--python-version={PYTHON_VERSION}", "--only-binary=:all:"]


def _pyproject_requirements(pyproject: Path) -> dict[str, Requirement]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_norm(r.name): r for r in map(Requirement, deps)}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def job_requirements(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """`JOB_PACKAGES` pinned exactly: pyproject's `==` pin, else the installed version, which must
    satisfy pyproject's range (the job runs what the tests ran). dagster-pipes, which pyproject
    reaches through dagster's own pin, is the installed one."""
    declared = _pyproject_requirements(pyproject)
    pins = []
    for name, extras in JOB_PACKAGES.items():
        req = declared.get(_norm(name))
        exact = [s.version for s in req.specifier if s.operator == "=="] if req else []
        if exact:
            version = exact[0]
        else:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise PackageError(f"{name}: not pinned in {pyproject} and not installed here; cannot pin the job's version") from None
            if req and not req.specifier.contains(version, prereleases=True):
                raise PackageError(f"{name} {version} is installed but {pyproject} asks for {req}")
        pins.append(f"{name}{'[' + ','.join(extras) + ']' if extras else ''}=={version}")
    return pins


def _pip(args: list[str], *, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise PackageError(f"{what} failed (pip exited {proc.returncode}):\n{tail}")


def resolve(target: Target = Target(), *, pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """The wheel files pip picks for `target` (a dry run: metadata only, nothing installed), to check
    a platform without building for it; fails naming the package that has no wheel there."""
    with tempfile.TemporaryDirectory(prefix="lake-emr-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        requirements = job_requirements(pyproject)
        _pip(["install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report), "--target", str(Path(tmp) / "t"),
              *target.pip_platform_args(), *requirements], what=f"resolving {', '.join(requirements)} for {target.arch}")
        return sorted(i["download_info"]["url"].rsplit("/", 1)[-1] for i in json.loads(report.read_text())["install"])


def project_wheel(workdir: Path, sources: Path = REPO_ROOT) -> Path:
    """A wheel of this project, built from a copy of its sources (the checkout gets no build/ litter)."""
    src = workdir / "src"
    for name in PROJECT_SOURCES:
        path = sources / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    out = workdir / "wheel"
    _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)], what="building this project's wheel")
    [wheel] = out.glob("*.whl")
    return wheel


LAUNCHER = """\
#!/bin/sh
# The lake's Spark job environment ({command} build): this archive's packages on Python {version}.
here=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$here/{site}${{PYTHONPATH:+:$PYTHONPATH}}"
export PYTHONPATH
exec {interpreter} "$@"
"""


def build(out_dir: Path, target: Target = Target(), *, interpreter: str = f"python{PYTHON_VERSION}",
          pyproject: Path = REPO_ROOT / "pyproject.toml") -> Path:
    """Build the job's environment archive into `out_dir`; returns its path."""
    requirements = job_requirements(pyproject)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / f"lake-job-env-{target.arch}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="lake-emr-env-") as tmp:
        work = Path(tmp)
        root = work / "env"
        site = root / SITE_PACKAGES
        _pip(["install", "--quiet", "--no-compile", "--target", str(site), *target.pip_platform_args(), *requirements],
             what=f"resolving {', '.join(requirements)} for {target.platforms()[0] if target.platforms() else 'this host'}")
        wheel = project_wheel(work)
        _pip(["install", "--quiet", "--no-compile", "--no-deps", "--target", str(site), str(wheel)], what=f"installing {wheel.name}")
        shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts written for this machine's paths
        (root / "bin").mkdir()
        launcher = root / "bin" / "python"
        launcher.write_text(LAUNCHER.format(command=COMMAND, version=PYTHON_VERSION, site=SITE_PACKAGES, interpreter=interpreter))
        launcher.chmod(0o755)
        (root / MANIFEST).write_text(json.dumps({
            "arch": target.arch, "platforms": target.platforms() or ["host"], "python": PYTHON_VERSION,
            "interpreter": interpreter, "requirements": requirements, "project_wheel": wheel.name,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2) + "\n")
        partial = archive.with_suffix(".partial")
        with tarfile.open(partial, "w:gz", compresslevel=1) as tar:  # ~4x faster than 9, ~10% larger
            for path in sorted(root.iterdir()):
                tar.add(path, arcname=path.name)
        partial.replace(archive)
    return archive


def _s3_parts(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri.removeprefix("s3://"):
        raise PackageError(f"{uri!r} is not an s3://bucket/key URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def publish_job_script(s3, script_uri: str) -> None:
    """Upload the job script of the installed package to where EMR Serverless runs it from."""
    bucket, key = _s3_parts(script_uri)
    s3.put_object(Bucket=bucket, Key=key, Body=merge_job_script().read_bytes())


def publish(s3, archive: Path, *, environment_uri: str, script_uri: str) -> None:
    """Upload the environment archive and the job script (what `EmrServerless` submits)."""
    bucket, key = _s3_parts(environment_uri)
    s3.upload_file(str(archive), bucket, key)
    publish_job_script(s3, script_uri)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "publish"):
        p = sub.add_parser(name)
        p.add_argument("--arch", default="x86_64", help="x86_64 (default) or arm64, the EMR application's architecture; host: this machine")
        p.add_argument("--out", type=Path, default=Path("dist"), help="where the archive is written (default dist/)")
        p.add_argument("--interpreter", default=f"python{PYTHON_VERSION}", help="the Python 3.11 of the EMR image the launcher runs")
    pub = sub.choices["publish"]
    pub.add_argument("--archive", type=Path, help="an archive built before (default: build one now)")
    pub.add_argument("--environment-uri", help="default LAKE_EMR_ENVIRONMENT_URI")
    pub.add_argument("--script-uri", help="default LAKE_EMR_SCRIPT_URI")
    args = parser.parse_args(argv)
    try:
        target = Target(args.arch)
        if args.command == "build":
            print(build(args.out, target, interpreter=args.interpreter))
            return 0
        from lake_assets.core.settings import current_settings

        spark = current_settings().spark
        env_uri = args.environment_uri or spark.emr_environment_uri
        script_uri = args.script_uri or spark.emr_script_uri
        if not env_uri or not script_uri:
            raise PackageError("publish needs --environment-uri and --script-uri (or LAKE_EMR_ENVIRONMENT_URI, LAKE_EMR_SCRIPT_URI)")
        archive = args.archive or build(args.out, target, interpreter=args.interpreter)
        import boto3

        publish(boto3.client("s3"), archive, environment_uri=env_uri, script_uri=script_uri)
        print(f"published {archive.name} to {env_uri} and {merge_job_script().name} to {script_uri}")
        return 0
    except PackageError as e:
        print(f"{COMMAND}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ENVIRONMENT_DIR", "JOB_PACKAGES", "JOB_PYTHON", "PackageError", "Target", "build", "job_requirements",
           "publish", "publish_job_script", "resolve"]
