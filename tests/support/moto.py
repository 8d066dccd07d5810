"""A moto server (AWS stand-in) in a subprocess on 127.0.0.1, for the drivers that speak to AWS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REGION = "us-east-1"
# moto accepts any credentials; fixed fake ones keep a developer's real ones out of the tests.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}
# Settings that would make the server or a client look elsewhere for credentials or endpoints.
CLEARED_AWS = ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL")


# NOTE: moto's own ``moto_server`` serves each request on a thread, and its Kinesis hands out a
# shard's next sequence number without a lock, so concurrent PutRecords calls get the same number
# and one record overwrites the other. Real Kinesis sequences a shard atomically; serving one
# request at a time restores that. (moto < 6: the WSGI app lives in moto.moto_server.)
_LAUNCHER = """
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
port = int(sys.argv[1])
os.environ["MOTO_PORT"] = str(port)
app = DomainDispatcherApplication(create_backend_app)
run_simple("127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class MotoServer:
    """moto's server bound to 127.0.0.1 on a free port, one request at a time; ``stop`` ends it."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> MotoServer:
        env = {key: value for key, value in os.environ.items() if key not in CLEARED_AWS}
        env.update(FAKE_AWS)
        # CAUTION: not a pipe: moto logs every request, and a pipe nobody reads fills and hangs it.
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read()
                raise RuntimeError(f"moto server exited at start: {err.decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto server did not listen on {self.url} within {timeout} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._log.close()
        self._process = None
