"""Whether llama.cpp runs on this machine, found out once, in a process of its own.

llama-cpp-python is compiled on the machine that installs it. A build that does
not suit the CPU (copied from another machine, or using instructions the system
refuses, such as Intel AMX in some virtual machines) loads a GGUF file and then
dies of an illegal instruction at its first answer, taking its whole process
with it: here the studio, with whatever it was doing. So before the studio's
own process first asks llama.cpp for an answer, a short-lived process does, on
the same file.

    check_llama_cpp_runs(path)   # ModelLoadError saying what to do when llama.cpp crashed
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from studio.errors import ModelLoadError

PROBE = ("import sys\n"
         "from llama_cpp import Llama\n"
         "Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)('a', max_tokens=1)\n")
_answered = False  # a probe answered once: llama.cpp runs on this machine


def check_llama_cpp_runs(path: Path) -> None:
    """Raise ModelLoadError when llama.cpp, asked for one token of `path` in a process of its own, crashed.

    A probe that fails as Python (a file llama.cpp cannot load) leaves the reporting to the caller's own load.
    """
    global _answered
    if _answered:
        return
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=600)
    if done.returncode >= 0:
        _answered = done.returncode == 0
        return
    name = signal.Signals(-done.returncode).name
    illegal = " (an illegal instruction: built for another CPU, or using instructions this system refuses)"
    raise ModelLoadError(
        f"llama.cpp crashed when asked to answer from {Path(path).name}, killed by {name}"
        f"{illegal if name == 'SIGILL' else ''}. The installed llama-cpp-python does not run on this machine; "
        "rebuild it here: rm -rf ~/.cache/studio-wheels .venv/.setup-* && bash scripts/setup.sh")
