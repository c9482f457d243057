"""The tests' Google Cloud Storage: gcp-storage-emulator, with two behaviours of GCS that it lacks
and that the library relies on:

- a download names the object's generation (the ``x-goog-generation`` header), which tensorstore
  reads, and with it the OCDBT checkpoints of orbax;
- an upload or a delete with ``ifGenerationMatch`` happens only when the object's generation is
  the one given (0: the object does not exist), else fails with 412, as GCS's preconditions do;
  the workdir lock's create-if-absent relies on them.

``serve()`` starts it in a process of its own and points this process's clients, and those of
the processes it starts, at it; ``python tests/gcs_emulator.py start --port=PORT ...`` runs it
as the emulator's own command.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus


@contextlib.contextmanager
def serve():
    """``gs://bkt`` on an in-memory emulator on the loopback address, for the ``with`` block: the
    variables through which every client the library uses finds it are set meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emulator = subprocess.Popen(
        [sys.executable, __file__, "start", "--in-memory", f"--port={port}"]
        + ["--host=127.0.0.1", "--default-bucket=bkt"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/bkt", timeout=1).close()
            break
        except OSError:
            if emulator.poll() is not None or time.monotonic() > deadline:
                emulator.kill()
                raise RuntimeError("the GCS emulator did not start") from None
            time.sleep(0.1)
    variables = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs: etils.epath's results, plots, TensorBoard, data
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore: orbax's checkpoints, the workdir lock
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # ArrayRecord's GCS reader: tfds data
        # gcsfs's default file system first asks GCS's control API (not emulated) for every
        # bucket's layout, fails and warns, each time; the plain one does not ask.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield "gs://bkt"
    finally:
        emulator.kill()
        emulator.wait()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _with_precondition(handler, name_of):
    def conditional(request, response, storage, *args, **kwargs):
        expected = request.query.get("ifGenerationMatch")
        if expected:
            bucket = request.params["bucket_name"]
            if _generation(storage, bucket, name_of(request)) != expected[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return handler(request, response, storage, *args, **kwargs)

    return conditional


def _with_generation(handler):
    def download(request, response, storage, *args, **kwargs):
        handler(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            params = request.params
            response["x-goog-generation"] = _generation(
                storage, params["bucket_name"], params["object_id"]
            )

    return download


if __name__ == "__main__":
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    # Patched before the server module is imported: its routing table holds these functions.
    objects.download = _with_generation(objects.download)
    objects.insert = _with_precondition(objects.insert, lambda request: request.query["name"][0])
    objects.delete = _with_precondition(objects.delete, lambda request: request.params["object_id"])

    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
