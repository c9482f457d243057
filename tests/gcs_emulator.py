"""The tests' Google Cloud Storage: gcp-storage-emulator, with two behaviours of GCS that it lacks
and that the library relies on:

- a download names the object's generation (the ``x-goog-generation`` header), which tensorstore
  reads, and with it the OCDBT checkpoints of orbax;
- an upload or a delete with ``ifGenerationMatch`` happens only when the object's generation is
  the one given (0: the object does not exist), else fails with 412, as GCS's preconditions do;
  the workdir lock's create-if-absent relies on them.

Run as the emulator's own command: ``python tests/gcs_emulator.py start --port=PORT ...``.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


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


# Patched before the server module is imported: its routing table holds these functions.
objects.download = _with_generation(objects.download)
objects.insert = _with_precondition(objects.insert, lambda request: request.query["name"][0])
objects.delete = _with_precondition(objects.delete, lambda request: request.params["object_id"])

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
