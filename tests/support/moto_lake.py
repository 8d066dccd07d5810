"""A moto server (S3 stand-in) in a subprocess on a free 127.0.0.1 port, with fake credentials."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

# Never real ones: every AWS client in the tests reads these, so nothing can reach a real account.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# Settings that would make a client look elsewhere for credentials or endpoints.
CLEARED_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _command(port: int) -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    executable = beside if os.path.exists(beside) else shutil.which("moto_server")
    if executable:
        return [executable, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """``with MotoServer() as moto: moto.url`` — one server per process (per xdist worker)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._s3: Any = None

    def start(self, timeout: float = 20.0) -> MotoServer:
        env = {key: value for key, value in os.environ.items() if key not in CLEARED_AWS_ENV}
        env.update(FAKE_AWS_ENV)
        # CAUTION: not a pipe: moto logs every request to stderr, and once a pipe nobody reads is
        # full (some hundred requests) the server blocks and every later request hangs.
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(_command(self.port), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                error = self._log.read().decode(errors="replace")
                raise RuntimeError(f"moto_server exited with {self._process.returncode}: {error[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto_server did not answer on {self.url} within {timeout} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def s3_client(self) -> Any:
        """A synchronous boto3 S3 client for test set-up (creating buckets, peeking at objects)."""
        if self._s3 is None:
            self._s3 = self._new_s3_client()
        return self._s3

    def _new_s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=FAKE_AWS_ENV["AWS_SESSION_TOKEN"],
        )

    def create_bucket(self) -> str:
        """A new, empty bucket with a unique name."""
        name = f"lake-{uuid.uuid4().hex[:16]}"
        self.s3_client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
