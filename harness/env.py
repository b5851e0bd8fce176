"""The environment a measurement was taken in: device, clocks, driver and library versions, commit, date.

Every sweep record and baseline carries these fields, so results from different GPUs, drivers or
Triton versions are never compared by accident.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Optional

import torch

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Optional[Path] = None) -> Optional[str]:
    """stdout of ``cmd`` stripped, or None when it is missing, fails or takes over 5 s."""
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _nvidia_smi(index: int) -> dict:
    """SM and memory clocks (MHz) and the driver version of GPU ``index`` from nvidia-smi; Nones
    where it does not answer."""
    fields = "clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,driver_version"
    text = _run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", str(index)])
    values = [v.strip() for v in text.split(",")] if text else []
    if len(values) != 5:
        return {"clocks": None, "driver": None}

    def number(s: str) -> Optional[float]:
        try:
            return float(s)
        except ValueError:
            return None

    clocks = {
        "sm_mhz": number(values[0]),
        "mem_mhz": number(values[1]),
        "max_sm_mhz": number(values[2]),
        "max_mem_mhz": number(values[3]),
    }
    return {"clocks": clocks, "driver": values[4]}


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 -- a missing/broken module has no version
        return None


def _deltalab_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("deltalab")
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """The commit of the deltalab checkout (with "-dirty" when it has local changes), or None."""
    commit = _run(["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT)
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO_ROOT)
    return commit + ("-dirty" if status else "")


def environment(device=None) -> dict:
    """Where and with what a measurement is taken (JSON-able).

    Keys: gpu (device name, or "cpu"), compute_capability ("9.0" or None), sm_count, clocks (dict of
    MHz from nvidia-smi, or None), driver, cuda, torch, triton, deltalab, python, git_commit, date
    (ISO 8601 UTC), hostname, interpreter (True when Triton kernels run under TRITON_INTERPRET=1),
    device ("cuda:0" or "cpu").
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info: dict = {"gpu": "cpu", "compute_capability": None, "sm_count": None, "clocks": None, "driver": None}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            **_nvidia_smi(index),
        )
        device = torch.device("cuda", index)
    info.update(
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=_version("triton"),
        deltalab=_deltalab_version(),
        python=platform.python_version(),
        git_commit=git_commit(),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        hostname=socket.gethostname(),
        interpreter=os.environ.get("TRITON_INTERPRET") == "1",
        device=str(device),
    )
    return info


def gpu_slug(env: dict) -> str:
    """A file-name-safe name of the device: "nvidia-h200", "cpu"."""
    name = str(env.get("gpu") or "cpu").lower()
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
