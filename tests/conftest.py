"""Fixtures shared by the engine test modules."""
import pytest

from tests.training_fixtures import single_thread, write_tiny_rec


@pytest.fixture(scope="module")
def tiny_rec(tmp_path_factory):
    """A 4-class, 32-image insightface rec (with an lfw.bin), one per test module."""
    return write_tiny_rec(tmp_path_factory.mktemp("tiny_rec"))


@pytest.fixture
def one_thread():
    with single_thread():
        yield
