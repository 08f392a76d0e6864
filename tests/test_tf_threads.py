"""The image's TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS reach TensorFlow's thread pools."""

import os
import subprocess
import sys

import pytest

from worker.tf_threads import thread_settings

PROBE = """
from worker.tf_threads import apply_tf_threads
import tensorflow as tf
print(apply_tf_threads(), tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def _probe(**env) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    e.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_thread_pools_follow_the_environment():
    assert _probe(TF_NUM_INTRAOP_THREADS="3", TF_NUM_INTEROP_THREADS="1") == "(3, 1) 3 1"


def test_unset_leaves_tensorflow_defaults():
    assert thread_settings({}) == (0, 0)


@pytest.mark.parametrize("bad", ["-1", "1.5", "lots"])
def test_bad_values_are_refused_with_the_variable_name(bad):
    with pytest.raises(ValueError, match="TF_NUM_INTEROP_THREADS"):
        thread_settings({"TF_NUM_INTEROP_THREADS": bad})
