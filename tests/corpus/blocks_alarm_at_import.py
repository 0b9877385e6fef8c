"""Hangs where a Python-level timer cannot interrupt it (SIGALRM blocked, as in native code)."""
import signal
import time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
time.sleep(3600)
