"""Test session set-up: four forced CPU devices, so multi-device paths run on any machine."""

import io
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.testing import mocking  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture
def mock_tfds(monkeypatch):
    """``tfds.testing.mock_data`` from the builder code alone (no metadata files needed).

    tensorflow-datasets 4.9.10 attaches the mocked ``__getitems__`` as an unbound
    ``functools.partial(_getitems, generator=...)``, so a batch read passes the keys as ``self``
    and fails; the replacement below takes the keys first.
    """

    def getitems(record_keys, generator, serialized=False):
        assert not serialized
        return [generator[key] for key in record_keys]

    monkeypatch.setattr(mocking, "_getitems", getitems)

    def encode_png(self, image):
        """Encodes like tfds's Image feature, with PIL instead of TensorFlow: mock data read with
        ``SkipDecoding`` (data sets of varying image size) are encoded first."""
        buffer = io.BytesIO()
        PIL.Image.fromarray(
            np.asarray(image).squeeze(-1) if np.shape(image)[-1] == 1 else np.asarray(image)
        ).save(buffer, format="PNG")
        return buffer.getvalue()

    monkeypatch.setattr(tfds.features.Image, "encode_example", encode_png)

    def mock(num_examples):
        return tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
        )

    return mock


@pytest.fixture
def mock_cifar10(mock_tfds):
    """Mock CIFAR-10 with 48 examples per split."""
    with mock_tfds(num_examples=48):
        yield
