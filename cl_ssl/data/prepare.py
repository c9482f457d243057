"""Prepares a tfds data set once, in the array_record format that `cl_ssl.data.sources` reads.

    pip install '.[prepare]'    # TensorFlow: tfds needs it to prepare, not to read
    python -m cl_ssl.data.prepare --dataset=cifar100 --data_dir=DIR

Training then reads DIR without TensorFlow (``--config.dataset.data_dir=DIR``). Where the
machine has no internet access, prepare elsewhere and copy DIR.
"""

from absl import app, flags

_DATASET = flags.DEFINE_string(
    "dataset", None, "tfds name, e.g. cifar100, cifar10, fashion_mnist.", required=True
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)


def main(argv):
    del argv
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise SystemExit(
            "Preparing a tfds data set needs TensorFlow: pip install '.[prepare]' (reading the "
            "prepared data does not)."
        ) from None
    import tensorflow_datasets as tfds

    builder = tfds.builder(_DATASET.value, data_dir=_DATA_DIR.value, file_format="array_record")
    builder.download_and_prepare()
    print(f"Prepared {_DATASET.value} under {builder.data_dir_root}.")


if __name__ == "__main__":
    app.run(main)
