"""fix12b (issue 12): the findings earlier probe rounds recorded but left - each bad input
is one ValueError naming the argument (API) or one line and exit 2 (CLI), before any fit."""

import warnings

import numpy as np
import pytest

from homodyne.optimization.nlsq_wrapper import NLSQWrapper

X = np.linspace(0.0, 5.0, 50)
Y = 2.0 * np.exp(-0.7 * X)


def model(x, a, b):
    import jax.numpy as jnp

    return a * jnp.exp(-b * x)


def _with(a, i, v):
    a = np.array(a, float)
    a[i] = v
    return a


# --- Python API (probe4 L1-L3, probe2 W9) ---------------------------------------------

@pytest.mark.parametrize("xdata, ydata, sigma, message", [
    (_with(X, 7, np.nan), Y, None,
     "xdata holds 1 NaN/Inf value(s) (first at index 7: nan): the model cannot be evaluated"),
    (_with(X, 3, np.inf), Y, None, "xdata holds 1 NaN/Inf value(s) (first at index 3: inf)"),
    (X, Y, _with(np.ones(50), 4, 1e-300),
     "sigma is too small for float64 weights: sigma[4] = 1e-300"),
    (X, Y > 1.0, None, "ydata must hold measured numbers, got booleans (dtype bool)"),
    (X, Y, np.ones(50, bool), "sigma must hold real numbers, got dtype bool"),
])
def test_bad_data_is_named_before_the_fit_not_blamed_on_the_model(xdata, ydata, sigma,
                                                                   message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper().fit(model, xdata, ydata, [1.0, 1.0], sigma=sigma)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("kwargs, message", [
    ({"callback": 5}, "callback must be callable (called as callback(batch_idx, params, loss, "
                      "success) after each batch) or None, got 5"),
    ({"parallel_batches": 0}, "parallel_batches must be a whole number >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a whole number >= 1 (None: automatic), got 2.5"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1 (None: automatic), got 0"),
    ({"adaptive_batching": True, "max_batch_size": 0},
     "max_batch_size must be a whole number >= 1, got 0"),
    ({"adaptive_batching": True, "initial_batch_size": 0.5},
     "initial_batch_size must be a whole number >= 1 (None: automatic), got 0.5"),
])
def test_constructor_values_that_fail_later_or_do_nothing_are_refused_up_front(kwargs,
                                                                              message):
    with pytest.raises(ValueError) as err:
        NLSQWrapper(**kwargs)
    assert str(err.value) == message


def test_fixed_booleans_are_a_full_mask_or_refused():
    w = NLSQWrapper()
    with pytest.raises(ValueError) as err:
        w.fit(model, X, Y, [1.0, 1.0], fixed=[True])
    assert str(err.value).startswith("fixed: booleans are only accepted as a mask of one per "
                                     "parameter (2: ['p0', 'p1']), got [True]")
    # a full mask holds exactly the True ones: a at its p0 = 2.0, b fitted to the truth
    res = w.fit(model, X, Y, [2.0, 1.0], fixed=[True, False])
    np.testing.assert_allclose(res.x, [2.0, 0.7], rtol=1e-6)
    assert res.x[0] == 2.0


@pytest.mark.parametrize("p0, names, message", [
    ([1.0, 1.0, 1.0], None, "p0 has 3 values but model_func takes 2 parameters after xdata "
                            "['a', 'b']: give one start value per parameter"),
    ([1.0], None, "p0 has 1 values but model_func takes 2 parameters after xdata"),
    ([1.0, 1.0], ["a"], "p0 has 2 values but parameter_names names 1: ['a']"),
])
def test_p0_of_the_wrong_length_is_named_before_the_model_is_called(p0, names, message):
    def numpy_model(x, a, b):  # not traceable by JAX: the case that fell to a TypeError
        return a * np.exp(-b * np.asarray(x))

    with warnings.catch_warnings(record=True) as record, pytest.raises(ValueError) as err:
        warnings.simplefilter("always")
        NLSQWrapper().fit(numpy_model, X, Y, p0, parameter_names=names)
    assert str(err.value).startswith(message)
    assert record == []  # named before the model is traced (no NumPy-fallback warning)
