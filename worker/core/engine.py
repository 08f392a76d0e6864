"""The engine: one stateful Keras LSTM whose batch has B fixed slots, advanced a tick at a time.

A tick feeds at most one reading per slot.  ``step(x, mask)`` returns, for every slot, the
value the model expected *before* this tick (the head applied to the slot's hidden state)
and then advances the slots whose ``mask`` is set; the others keep their state bit for
bit (``tf.where`` on the state variables).  The step is one ``tf.function`` traced once
for the fixed shapes, so a tick costs one call, never a ``model.predict`` per reading.

State layout per slot: ``[h_0, c_0, h_1, c_1, ...]`` concatenated (``state_size`` floats).
"""

from __future__ import annotations

import numpy as np

from worker.core.artifact import build_network


def concrete_caller(fn):
    """A call of the concrete function ``fn`` on numpy arrays that skips ``tf.function``'s argument binding.

    ``ConcreteFunction.__call__`` binds and checks its arguments against the signature in Python
    (about 130 us a call here, a quarter of the B=256 step); the arrays' shapes and dtypes are fixed
    by the caller, so the flat call (``_call_flat`` with the captured variables) does the same work.
    Falls back to the public call where this TensorFlow has no ``_call_flat``."""
    import tensorflow as tf

    flat = getattr(fn, "_call_flat", None)
    if flat is None:
        return lambda *arrays: fn(*(tf.constant(a) for a in arrays))
    captured = fn.captured_inputs
    const = eager_constant()
    return lambda *arrays: flat([const(a) for a in arrays], captured)


def eager_constant():
    """The fastest ``numpy array -> eager tensor`` this TensorFlow offers (same bits as ``tf.constant``).

    ``tf.constant`` copies the array and places the tensor on the context's device name, which
    here cost ~50 us a call (measured against ~2.5 us): two of them were a large share of the
    B=256 step.  ``EagerTensor(array, None, None)`` makes the host tensor directly (it copies the
    array here, as ``tf.constant`` does; the engine's callers hand it a fresh array per call anyway).
    Falls back to ``tf.constant`` where the private constructor is missing or misbehaves."""
    import tensorflow as tf

    try:
        from tensorflow.python.eager import context
        from tensorflow.python.framework.ops import EagerTensor

        context.ensure_initialized()
        probe = np.arange(3, dtype=np.float32)
        if not np.array_equal(EagerTensor(probe, None, None).numpy(), probe):
            raise TypeError("EagerTensor gave other values")
    except Exception:  # noqa: BLE001 - any failure: the public call
        return tf.constant
    return lambda a: EagerTensor(a, None, None)


class SlotEngine:
    """B slots of the slotwatch network; weights from an artifact (sequence form).

    >>> import numpy as np
    >>> from worker.core.artifact import build_network
    >>> net = build_network(n_features=1, units=[4], seed=1)
    >>> eng = SlotEngine(net.get_weights(), n_features=1, units=[4], slots=3)
    >>> x = np.zeros((3, 1, 1), np.float32); x[1, 0, 0] = 0.5
    >>> _ = eng.step(x, np.array([False, True, False]))
    >>> s = eng.read_state(np.arange(3))
    >>> bool(np.all(s[0] == 0) and np.all(s[2] == 0) and np.any(s[1] != 0))
    True
    """

    def __init__(self, weights: list[np.ndarray], n_features: int, units: list[int], slots: int, jit_compile: bool = True) -> None:
        import tensorflow as tf

        self.slots = slots
        self.n_features = n_features
        self.units = list(units)
        self.model = build_network(n_features, self.units, batch_size=slots, stateful=True)
        self.model.set_weights(weights)
        lstms = [self.model.get_layer(f"lstm_{i}") for i in range(len(self.units))]
        head = self.model.get_layer("head")
        state_vars = [v for layer in lstms for v in layer.states]  # h0, c0, h1, c1, ...
        sizes = [int(v.shape[-1]) for v in state_vars]
        self.state_size = int(sum(sizes))
        offsets = np.cumsum([0] + sizes)
        last_h = lstms[-1].states[0]
        model = self.model

        def _step(x, mask):
            old = [tf.identity(v) for v in state_vars]
            expected = head(tf.identity(last_h))
            model(x, training=False)  # stateful: assigns new states to the variables
            keep = tf.expand_dims(mask, 1)
            for v, o in zip(state_vars, old):
                v.assign(tf.where(keep, v, o))
            return expected

        def _warm(x, mask):
            # every slot from zero through a whole ring (oldest first) in one call; the live
            # states are put back afterwards, so this may run between ticks of live sensors
            old = [tf.identity(v) for v in state_vars]
            for v in state_vars:
                v.assign(tf.zeros_like(v))
            steps = tf.shape(x)[1]
            exps = tf.TensorArray(tf.float32, size=steps)
            for t in tf.range(steps):
                exps = exps.write(t, _step(x[:, t : t + 1, :], mask[:, t]))
            final = tf.concat([tf.identity(v) for v in state_vars], axis=1)
            for v, o in zip(state_vars, old):
                v.assign(o)
            return final, tf.transpose(exps.stack(), [1, 0, 2])

        def _read(slot_idx):
            return tf.concat([tf.gather(v, slot_idx) for v in state_vars], axis=1)

        def _write(slot_idx, values):
            idx = tf.expand_dims(slot_idx, 1)
            for v, a, b in zip(state_vars, offsets[:-1], offsets[1:]):
                v.assign(tf.tensor_scatter_nd_update(v, idx, values[:, int(a) : int(b)]))
            return tf.constant(0)

        spec_x = tf.TensorSpec((slots, 1, n_features), tf.float32)
        spec_m = tf.TensorSpec((slots,), tf.bool)
        spec_i = tf.TensorSpec((None,), tf.int32)
        spec_v = tf.TensorSpec((None, self.state_size), tf.float32)
        # Concrete functions: calling them skips tf.function's argument matching, which
        # costs more than the LSTM step itself at these sizes (measured: ~170 vs ~330 us).
        self._step = tf.function(_step, jit_compile=jit_compile).get_concrete_function(spec_x, spec_m)
        self._read = tf.function(_read).get_concrete_function(spec_i)
        self._write = tf.function(_write).get_concrete_function(spec_i, spec_v)
        self._warm_fn = tf.function(_warm, jit_compile=jit_compile)
        self._warm_specs = (tf.TensorSpec((slots, None, n_features), tf.float32), tf.TensorSpec((slots, None), tf.bool))
        self._warm = None  # traced on first use (a handover), see warm()
        self._const = eager_constant()
        self._step_flat = concrete_caller(self._step)
        # compile now, not on the first reading: XLA compiles on first call (~0.3 s here)
        self._step(self._const(np.zeros((slots, 1, n_features), np.float32)), self._const(np.zeros(slots, bool)))
        self.read_state(np.zeros(1, np.int32))
        self._write(self._const(np.zeros(0, np.int32)), self._const(np.zeros((0, self.state_size), np.float32)))

    def step(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Advance the masked slots by one reading each; returns expected values (B, F), before the step."""
        return self._step_flat(x, mask).numpy()

    def warm(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every slot from zero state through ``x`` (B, R, F), readings where ``mask`` (B, R).

        Returns the final states (B, state_size) and the expected values before each step
        (B, R, F), as ``step`` would have given them one at a time.  The slots' current
        states are left as they were.
        """
        if self._warm is None:
            self._warm = self._warm_fn.get_concrete_function(*self._warm_specs)
        final, expected = self._warm(self._const(np.asarray(x, np.float32)), self._const(np.asarray(mask, bool)))
        return final.numpy(), expected.numpy()

    def read_state(self, slots: np.ndarray) -> np.ndarray:
        """State of the given slots, shape (n, state_size)."""
        return self._read(self._const(np.asarray(slots, dtype=np.int32))).numpy()

    def write_state(self, slots: np.ndarray, values: np.ndarray) -> None:
        slots = np.asarray(slots, dtype=np.int32)
        if len(slots):
            self._write(self._const(slots), self._const(np.asarray(values, dtype=np.float32)))

    def reset(self, slots: np.ndarray) -> None:
        """Zero the state of the given slots."""
        slots = np.asarray(slots, dtype=np.int32)
        self.write_state(slots, np.zeros((len(slots), self.state_size), np.float32))
