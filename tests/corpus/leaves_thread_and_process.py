"""Starts a non-daemon thread and a child process at import and leaves both running; the path of
a file to write the child's pid into comes from $AITUNE_TEST_PID_FILE."""
import os
import subprocess
import sys
import threading
import time

import torch

threading.Thread(target=time.sleep, args=(3600,), name="left-behind").start()
_child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
with open(os.environ["AITUNE_TEST_PID_FILE"], "w") as f:
    f.write(str(_child.pid))


def get_model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def get_samples():
    return [torch.randn(b, 4) for b in (1, 2)]
