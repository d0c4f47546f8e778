"""Refuses, and writes down, every network connection a Python process tries beyond this machine.

Put this folder first on PYTHONPATH and name a log file in NETWORK_ATTEMPTS_LOG: Python imports
`sitecustomize` at start, before any of the process's own code, so every later socket goes through
these checks (child Python processes inherit the environment, and the guard with it). An attempt is
logged before it is refused, so a library that swallows the error is still caught.
"""

import ipaddress
import json
import os
import socket
import traceback

LOG = os.environ["NETWORK_ATTEMPTS_LOG"]
LOCAL_NAMES = {None, "", "localhost", "0.0.0.0", "::"}


def is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def refuse(what: str, target, error=OSError) -> None:
    stack = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-2]][-40:]
    with open(LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "call": what, "target": repr(target), "stack": stack}) + "\n")
    raise error(101, f"Network is unreachable (outbound connection refused by the test guard: {target!r})")


real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
        refuse("connect", address)
    return real_connect(self, address)


def guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
        refuse("connect_ex", address)
    return real_connect_ex(self, address)


def guarded_getaddrinfo(host, *args, **kwargs):
    if not is_local(host):
        refuse("getaddrinfo", host, socket.gaierror)
    return real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = guarded_connect
socket.socket.connect_ex = guarded_connect_ex
socket.getaddrinfo = guarded_getaddrinfo
