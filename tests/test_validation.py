"""Bad arguments to ``estimate_llc`` fail fast, before anything compiles, naming the argument.

Every test runs with the compiled core (``Plan.sample``) replaced by a stub that raises
``AssertionError("compiled")``: a bad input that slipped through validation would reach the
stub and fail the ``pytest.raises(ValueError/TypeError)`` below with that AssertionError.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxslt
import jaxslt.plan
from jaxslt import validation

N = 10


def loss_fn(params, batch):
    return jnp.mean((batch[0] @ params["w"]) ** 2)


def vector_loss_fn(params, batch):
    return (batch[0] @ params["w"]) ** 2


def int_loss_fn(params, batch):
    return jnp.sum(batch[0] @ params["w"]).astype(jnp.int32)


def tuple_loss_fn(params, batch):
    return loss_fn(params, batch), {"aux": batch[0]}


def params():
    return {"w": jnp.ones(3)}


def data():
    return (jnp.ones((N, 3)),)


def valid_kwargs(**overrides):
    kwargs = dict(
        key=jax.random.key(0),
        step_size=1e-4,
        num_chains=2,
        num_draws=5,
        num_burnin=0,
        thinning=1,
        batch_size=4,
        nbeta=None,
        localization=1.0,
        sampler="sgld",
        progress=False,
    )
    kwargs.update(overrides)
    return kwargs


def _compiled(*args, **kwargs):
    raise AssertionError("compiled")


@pytest.fixture(autouse=True)
def no_compile(monkeypatch):
    """Validation must reject every bad input before the sampler is even called."""
    monkeypatch.setattr(jaxslt.plan.Plan, "sample", _compiled)


def call(loss=loss_fn, p=None, d=None, **overrides):
    return jaxslt.estimate_llc(
        loss,
        params() if p is None else p,
        data() if d is None else d,
        **valid_kwargs(**overrides),
    )


# --- positive: valid inputs pass every check and reach the (stubbed) compiled sampler --------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"key": jax.random.PRNGKey(0)},  # legacy raw uint32 key
        {"batch_size": N},  # full batch
        {"nbeta": 5.0, "localization": 0.0, "num_burnin": 3, "thinning": 2},
        {"step_size": np.float32(1e-3), "num_chains": np.int64(1)},
        {"nbeta": jnp.float32(2.0), "eval_batch_size": 3},
        {"sampler": "blackjax_sgld"},
    ],
)
def test_valid_inputs_reach_the_sampler(overrides):
    with pytest.raises(AssertionError, match="compiled"):
        call(**overrides)


def test_validation_functions_accept_valid_inputs():
    assert validation.check_data(data()) == N
    assert validation.check_data({"x": np.ones((7, 2)), "y": jnp.zeros(7)}) == 7
    validation.check_params(params())
    validation.check_key(jax.random.key(1))
    validation.check_settings(
        n=N,
        step_size=1e-4,
        num_chains=1,
        num_draws=1,
        num_burnin=0,
        thinning=1,
        batch_size=N,
        nbeta=None,
        localization=0.0,
        eval_batch_size=None,
    )
    assert validation.check_sampler("sgld", None, batch_size=None, n=N) == {}
    options = validation.check_sampler("sghmc", {"friction": 0.2}, batch_size=4, n=N)
    assert options == {"friction": 0.2}
    validation.check_loss_fn(loss_fn, params(), data(), 4)


# --- loss_fn ---------------------------------------------------------------------------------


def test_non_scalar_loss():
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar.*float32\[4\]"):
        call(loss=vector_loss_fn)


def test_tuple_loss():
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        call(loss=tuple_loss_fn)


def test_integer_loss():
    with pytest.raises(TypeError, match="loss_fn must return a float scalar"):
        call(loss=int_loss_fn)


def test_loss_not_callable():
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        call(loss="mse")


def test_loss_fails_on_batch_names_the_shapes():
    bad_data = (jnp.ones((N, 4)),)  # 4 features vs w of shape (3,)
    with pytest.raises(ValueError, match=r"loss_fn\(params, batch\) failed") as info:
        call(d=bad_data, batch_size=5)
    message = str(info.value)
    assert "float32[5, 4]" in message  # the batch it was given
    assert "float32[3]" in message  # the params it was given


# --- data ------------------------------------------------------------------------------------


def test_data_leaves_of_different_lengths():
    bad = (jnp.ones((N, 3)), jnp.ones((N - 1,)))
    with pytest.raises(
        ValueError, match=rf"data leaves have different leading lengths \[{N - 1}, {N}\]"
    ):
        call(d=bad)


def test_data_with_zero_examples():
    with pytest.raises(ValueError, match="data has zero examples"):
        call(d=(jnp.ones((0, 3)),), batch_size=1)


@pytest.mark.parametrize("empty", [(), {}, [], None])
def test_data_empty_pytree(empty):
    with pytest.raises(ValueError, match="data is empty"):
        jaxslt.estimate_llc(loss_fn, params(), empty, **valid_kwargs())


def test_data_scalar_leaf():
    with pytest.raises(TypeError, match="data leaves must be arrays with a leading example axis"):
        call(d=(jnp.ones((N, 3)), jnp.float32(1.0)))


# --- integer settings ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_not_positive(batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be >= 1; got {batch_size}"):
        call(batch_size=batch_size)


def test_batch_size_exceeds_n():
    with pytest.raises(
        ValueError, match=rf"batch_size={N + 1} exceeds the number of examples n={N}"
    ):
        call(batch_size=N + 1)


@pytest.mark.parametrize(
    ("name", "value", "low"),
    [
        ("num_chains", 0, 1),
        ("num_chains", -2, 1),
        ("num_draws", 0, 1),
        ("num_burnin", -1, 0),
        ("thinning", 0, 1),
        ("eval_batch_size", 0, 1),
    ],
)
def test_counts_out_of_range(name, value, low):
    with pytest.raises(ValueError, match=rf"{name} must be >= {low}; got {value}"):
        call(**{name: value})


@pytest.mark.parametrize(
    "name", ["num_chains", "num_draws", "num_burnin", "thinning", "batch_size", "eval_batch_size"]
)
@pytest.mark.parametrize("value", [2.5, 2.0, True, "4", np.float32(2)])
def test_counts_must_be_int(name, value):
    with pytest.raises(TypeError, match=rf"{name} must be an int; got"):
        call(**{name: value})


# --- real-valued settings --------------------------------------------------------------------


@pytest.mark.parametrize("step_size", [0, 0.0, -1e-4, -1])
def test_step_size_not_positive(step_size):
    with pytest.raises(ValueError, match="step_size must be > 0"):
        call(step_size=step_size)


@pytest.mark.parametrize("step_size", [np.nan, np.inf, -np.inf, jnp.float32(np.nan)])
def test_step_size_not_finite(step_size):
    with pytest.raises(ValueError, match="step_size must be finite"):
        call(step_size=step_size)


@pytest.mark.parametrize("step_size", ["1e-4", None, True, jnp.ones(2)])
def test_step_size_not_a_number(step_size):
    with pytest.raises(TypeError, match="step_size must be a number"):
        call(step_size=step_size)


def test_step_size_auto_is_the_only_string():
    with pytest.raises(TypeError, match='step_size must be a number or "auto"'):
        call(step_size="automatic")


@pytest.mark.parametrize("nbeta", [0, 0.0, -1.0])
def test_nbeta_not_positive(nbeta):
    with pytest.raises(ValueError, match=re.escape("nbeta must be > 0")):
        call(nbeta=nbeta)


@pytest.mark.parametrize("nbeta", [np.nan, np.inf])
def test_nbeta_not_finite(nbeta):
    with pytest.raises(ValueError, match="nbeta must be finite"):
        call(nbeta=nbeta)


def test_nbeta_default_undefined_for_one_example():
    with pytest.raises(ValueError, match="nbeta=None means n/log n, undefined for n=1"):
        call(d=(jnp.ones((1, 3)),), batch_size=1)


@pytest.mark.parametrize("localization", [-1e-3, -100.0])
def test_localization_negative(localization):
    with pytest.raises(ValueError, match=re.escape("localization (γ) must be >= 0")):
        call(localization=localization)


@pytest.mark.parametrize("localization", [np.nan, np.inf])
def test_localization_not_finite(localization):
    with pytest.raises(ValueError, match="localization must be finite"):
        call(localization=localization)


# --- params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"w": jnp.ones(3, jnp.int32)}, {"w": np.ones(3, np.int64)}, {"w": jnp.ones(3, bool)}]
)
def test_params_not_float(bad):
    with pytest.raises(TypeError, match=r"params leaf \['w'\] has dtype (int|bool)"):
        call(p=bad)


def test_params_python_scalar_leaf():
    with pytest.raises(TypeError, match=r"params leaf \['b'\] has dtype float"):
        call(p={"w": jnp.ones(3), "b": 1.0})


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_params_not_finite(value):
    bad = {"w": jnp.ones(3).at[1].set(value)}
    with pytest.raises(ValueError, match=r"params leaf \['w'\] contains NaN or inf"):
        call(p=bad)


def test_params_finite_check_names_the_bad_leaf_and_compiles_nothing_on_cpu(monkeypatch):
    # leaves of distinct shapes and dtypes, the bad one in the middle; on the CPU backend every
    # leaf is read where it lies: the compiled check is never called (a spy, not a trace count,
    # which a program cached by an earlier test would hide)
    def compiled(leaves):
        pytest.fail("the compiled finite check ran on CPU arrays")

    monkeypatch.setattr(validation, "_finite_on_devices", compiled)
    tree = {"a": jnp.ones((2, 3)), "b": np.ones(5, np.float64), "c": jnp.ones(4, jnp.bfloat16)}
    validation.check_params(tree)
    tree["b"] = tree["b"].copy()
    tree["b"][3] = np.nan
    with pytest.raises(ValueError, match=r"params leaf \['b'\] contains NaN or inf"):
        validation.check_params(tree)


def test_accelerator_arrays_are_checked_in_one_program(traces, monkeypatch):
    # as on a GPU: device arrays reduced on their devices in one program for the whole tree
    # (leaf by leaf, each distinct shape would compile two); host arrays read on the host
    monkeypatch.setattr(validation, "_in_host_memory", lambda x: not isinstance(x, jax.Array))
    bad = jnp.ones(4, jnp.bfloat16).at[2].set(jnp.inf)
    tree = {"a": jnp.ones((2, 3)), "b": np.ones(5), "c": bad}
    np.testing.assert_array_equal(validation.finite_flags(list(tree.values())), [1, 1, 0])
    assert traces["_finite_on_devices"] == 1
    with pytest.raises(ValueError, match=r"data\['c'\] contains NaN or inf"):
        validation.check_finite_data({k: v[None] for k, v in tree.items()})
    with pytest.raises(ValueError, match=r"params leaf \['c'\] contains NaN or inf"):
        validation.check_params(tree)


@pytest.mark.parametrize("empty", [{}, ()])
def test_params_empty(empty):
    with pytest.raises(ValueError, match="params is an empty pytree"):
        call(p=empty)


# --- sampler and key -------------------------------------------------------------------------


def test_unknown_sampler():
    with pytest.raises(ValueError, match=r"sampler='nuts' is unknown; choose one of \[.*'sgld'"):
        call(sampler="nuts")


def test_unknown_sampler_option():
    with pytest.raises(ValueError, match=r"sampler_options .* do not fit sampler='sgld'"):
        call(sampler_options={"friction": 0.1})


def test_unhashable_sampler_option():
    with pytest.raises(TypeError, match=r"sampler_options\['friction'\].*must be hashable"):
        call(sampler="sghmc", sampler_options={"friction": [0.1]})


def test_full_batch_sampler_with_a_minibatch():
    with pytest.raises(ValueError, match=r"sampler='mala' is full-batch.*batch_size=None or"):
        call(sampler="mala", batch_size=4)


def test_sampler_not_callable():
    with pytest.raises(TypeError, match="sampler must be a name or a factory"):
        call(sampler=3)


@pytest.mark.parametrize(
    "key",
    [
        0,
        None,
        jax.random.split(jax.random.key(0)),  # typed keys, shape (2,)
        jax.random.split(jax.random.PRNGKey(0)),  # raw keys, shape (2, 2)
        jnp.zeros(2, jnp.float32),
        np.zeros(2, np.int32),
    ],
    ids=["int", "None", "typed_split", "raw_split", "float_pair", "int32_pair"],
)
def test_bad_key(key):
    with pytest.raises(TypeError, match="key must be one PRNG key"):
        call(key=key)


def test_bad_key_reports_shape():
    with pytest.raises(TypeError, match=re.escape("shape (2,)")):
        call(key=jax.random.split(jax.random.key(0)))
