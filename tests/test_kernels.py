"""SGLD kernel: the exact update, per-leaf noise, dtypes; the blackjax adapter's convention; the
sampler registry and its capabilities."""

from __future__ import annotations

import blackjax
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from blackjax.util import generate_gaussian_noise

import jaxslt
from jaxslt import validation
from jaxslt.kernels import (
    SAMPLERS,
    SamplerCapabilities,
    SamplingKernel,
    from_blackjax,
    mala,
    register_sampler,
    rmsprop_sgld,
    sampler_capabilities,
    sgld,
    sgld_acceptance,
    sgnht,
    unregister_sampler,
)
from jaxslt.posterior import localized_posterior


def loss(params, batch):
    return jnp.mean(batch) * (jnp.sum(params["a"] ** 2) + jnp.sum(params["b"].astype(jnp.float32)))


PARAMS = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.ones((2, 2))}
BATCH = jnp.array([1.0, 3.0])


@pytest.mark.parametrize("jit", [False, True])
def test_sgld_step_is_the_documented_update(jit):
    eps, nbeta, gamma = 1e-2, 5.0, 0.5
    post = localized_posterior(loss, PARAMS, nbeta=nbeta, localization=gamma)
    kernel = sgld(post)
    position = jax.tree.map(lambda x: x + 0.1, PARAMS)
    key = jax.random.key(3)
    step = jax.jit(kernel.step) if jit else kernel.step
    state, info = step(key, kernel.init(position), BATCH, eps)
    # w + (ε/2)(−nβ∇L − γ(w − w*)) + √ε·ξ with ξ drawn per leaf by optax.tree.random_like
    grad_loss = jax.grad(loss)(position, BATCH)
    noise = optax.tree.random_like(key, position)
    expected = jax.tree.map(
        lambda w, g, w0, z: w + eps / 2 * (-nbeta * g - gamma * (w - w0)) + np.sqrt(eps) * z,
        position,
        grad_loss,
        PARAMS,
        noise,
    )
    chex.assert_trees_all_close(state.position, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info.loss, loss(position, BATCH), rtol=1e-6)


def test_sgld_keeps_leaf_dtypes_and_structure():
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones((2, 2), jnp.float32)}
    post = localized_posterior(loss, params, nbeta=5.0, localization=1.0)
    kernel = sgld(post)
    state, _ = kernel.step(jax.random.key(0), kernel.init(params), BATCH, 1e-3)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.position, params)


def test_blackjax_sgld_gets_half_the_step_size():
    """blackjax's x + h∇log p + √(2h)ξ with h = ε/2 is exactly jaxslt's convention."""
    eps = 1e-2
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = from_blackjax(blackjax.sgld, loss, post)
    position = jax.tree.map(lambda x: x + 0.1, PARAMS)
    key = jax.random.key(0)
    state, info = kernel.step(key, kernel.init(position, key), BATCH, eps)
    noise = generate_gaussian_noise(key, position)  # blackjax's own (flattening) draw
    expected = jax.tree.map(
        lambda w, g, z: w + eps / 2 * g + np.sqrt(eps) * z,
        position,
        post.grad_estimator(position, BATCH),
        noise,
    )
    chex.assert_trees_all_close(state.inner, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info.loss, loss(position, BATCH), rtol=1e-6)


def _quadratic(params, batch):
    del batch
    return 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * params["w"] ** 2)


def test_rmsprop_sgld_freezes_its_preconditioner_after_adapt_steps():
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = rmsprop_sgld(post, adapt_steps=3)

    def body(state, key):
        state, _ = kernel.step(key, state, BATCH, 1e-3)
        return state, state

    _, states = jax.lax.scan(body, kernel.init(PARAMS), jax.random.split(jax.random.key(0), 6))
    np.testing.assert_array_equal(states.count, [1, 2, 3, 3, 3, 3])
    for t in (3, 4, 5):
        chex.assert_trees_all_equal(
            jax.tree.map(lambda v, t=t: v[t], states.square_avg),
            jax.tree.map(lambda v: v[2], states.square_avg),
        )
    assert not np.array_equal(states.square_avg["a"][0], states.square_avg["a"][1])


def test_rmsprop_sgld_step_is_the_documented_update():
    decay, eps_pc, step = 0.9, 1e-3, 1e-2
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = rmsprop_sgld(post, decay=decay, eps=eps_pc)
    state = kernel.init(PARAMS)
    state = state._replace(
        position=jax.tree.map(lambda x: x + 0.1, PARAMS),
        square_avg=jax.tree.map(lambda x: jnp.full(x.shape, 2.0), PARAMS),
        count=jnp.array(4),
    )
    key = jax.random.key(1)
    new, _ = kernel.step(key, state, BATCH, step)
    grad = post.grad_estimator(state.position, BATCH)
    loss_grad = jax.tree.map(lambda g: -5.0 * g, jax.grad(loss)(state.position, BATCH))
    noise = optax.tree.random_like(key, state.position)

    def expected(w, g, lg, z):
        v = decay * 2.0 + (1 - decay) * lg**2
        precond = 1 / (jnp.sqrt(v / (1 - decay**5)) + eps_pc)
        return w + step / 2 * precond * g + jnp.sqrt(step * precond) * z

    chex.assert_trees_all_close(
        new.position,
        jax.tree.map(expected, state.position, grad, loss_grad, noise),
        rtol=1e-5,
    )


def test_rmsprop_sgld_with_frozen_preconditioner_samples_its_exact_gaussian():
    """Frozen G: each coordinate is SGLD with step ε·G_i, stationary variance
    1/(a_i(1 − εG_i a_i/4)); compare each chain's mean loss with its own exact expectation."""
    nbeta, eps, chains = 50.0, 2e-2, 256
    h = jnp.array([1.0, 4.0])
    center = {"w": jnp.zeros(2)}
    post = localized_posterior(_quadratic, center, nbeta=nbeta, localization=0.0)
    kernel = rmsprop_sgld(post, adapt_steps=200)

    def chain(key):
        def body(state, k):
            state, info = kernel.step(k, state, None, eps)
            return state, info.loss

        state, losses = jax.lax.scan(body, kernel.init(center), jax.random.split(key, 6000))
        return state, losses[1000:].mean()

    states, means = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), chains))
    v = states.square_avg["w"] / (1 - 0.99**200)
    precond = 1 / (jnp.sqrt(v) + 1.0)
    a = nbeta * h
    expected = jnp.sum(0.5 * h / (a * (1 - eps * precond * a / 4)), axis=-1)
    diff = np.asarray(means - expected)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(chains)
    assert np.all(precond < 0.5)  # the preconditioner really did rescale the step


def test_sgnht_step_updates_the_thermostat_from_the_kinetic_energy():
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = sgnht(post, friction=0.2)
    key, eps = jax.random.key(2), 1e-2
    state = kernel.init(PARAMS, jax.random.key(5))
    assert float(state.thermostat) == pytest.approx(0.2)
    new, _ = kernel.step(key, state, BATCH, eps)
    h = np.sqrt(eps / 2)
    grad = post.grad_estimator(PARAMS, BATCH)
    noise = optax.tree.random_like(key, PARAMS)
    momentum = jax.tree.map(
        lambda p, g, z: (1 - 0.2) * p + h * g + np.sqrt(0.4) * z, state.momentum, grad, noise
    )
    chex.assert_trees_all_close(new.momentum, momentum, rtol=1e-5)
    chex.assert_trees_all_close(
        new.position, jax.tree.map(lambda w, p: w + h * p, PARAMS, momentum), rtol=1e-5
    )
    kinetic = sum(float(jnp.sum(p**2)) for p in jax.tree.leaves(momentum)) / 7
    assert float(new.thermostat) == pytest.approx(0.2 + eps / 2 * ((1 - 0.1) * kinetic - 1))


def test_mala_accept_probability_and_rejection():
    post = localized_posterior(_quadratic, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0)
    kernel = mala(post)
    w = {"w": jnp.array([0.3, -0.2])}
    state = kernel.init(w, None, None)
    key, eps = jax.random.key(4), 0.05
    new, info = kernel.step(key, state, None, eps)
    k_prop, _ = jax.random.split(key)
    g = post.grad_estimator(w, None)
    prop = jax.tree.map(lambda x, gx, z: x + eps / 2 * gx + np.sqrt(eps) * z, w, g,
                        optax.tree.random_like(k_prop, w))  # fmt: skip
    gp = post.grad_estimator(prop, None)

    def log_q(to, frm, gf):
        return -sum(
            float(jnp.sum((a - b - eps / 2 * c) ** 2))
            for a, b, c in zip(*map(jax.tree.leaves, (to, frm, gf)), strict=True)
        ) / (2 * eps)

    log_ratio = (
        float(post.logdensity_fn(prop, None) - post.logdensity_fn(w, None))
        + log_q(w, prop, gp)
        - log_q(prop, w, g)
    )
    assert float(info.accept_prob) == pytest.approx(min(1.0, np.exp(log_ratio)), rel=1e-4)
    assert float(info.loss) == pytest.approx(float(_quadratic(w, None)))
    # the Metropolis decision: accept iff U(key_accept) < α, and then the state is the proposal,
    # else the old one — over fixed keys that give both outcomes
    outcomes = set()
    for seed in range(8):
        key = jax.random.key(seed)
        new, info = kernel.step(key, state, None, eps)
        k_prop, k_accept = jax.random.split(key)
        prop = jax.tree.map(lambda x, gx, z: x + eps / 2 * gx + np.sqrt(eps) * z, w, g,
                            optax.tree.random_like(k_prop, w))  # fmt: skip
        accepted = float(jax.random.uniform(k_accept)) < float(info.accept_prob)
        expected = prop["w"] if accepted else w["w"]
        np.testing.assert_allclose(new.position["w"], expected, rtol=1e-6, atol=1e-7)
        assert float(new.loss) == pytest.approx(float(_quadratic({"w": expected}, None)), rel=1e-5)
        outcomes.add(accepted)
    assert outcomes == {True, False}

    def cliff(params, batch):  # every proposal lands where the loss is NaN
        return jnp.where(jnp.abs(params["w"][0]) > 1e-6, jnp.nan, 0.0) + 0 * _quadratic(
            params, batch
        )

    kernel = mala(localized_posterior(cliff, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0))
    state = kernel.init({"w": jnp.zeros(2)}, None, None)
    new, info = kernel.step(key, state, None, eps)
    assert float(info.accept_prob) == 0.0
    chex.assert_trees_all_equal(new, state)


def test_sgld_acceptance_equals_mala_acceptance_of_the_same_proposal():
    post = localized_posterior(_quadratic, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0)
    position = {"w": jnp.array([0.3, -0.2])}
    probs = []
    for seed in range(4):
        key, eps = jax.random.key(seed), 0.05
        _, info = mala(post).step(key, mala(post).init(position, None, None), None, eps)
        kernel = sgld(post)
        new, _ = kernel.step(jax.random.split(key)[0], kernel.init(position), None, eps)
        prob = sgld_acceptance(post, position, new.position, None, eps)
        assert float(prob) == pytest.approx(float(info.accept_prob), rel=1e-4, abs=1e-7)
        probs.append(float(prob))
    assert any(0 < p < 1 for p in probs)


def test_acceptance_of_two_million_parameters_keeps_its_precision():
    """The Metropolis ratio at d = 2²¹ is computed in differences: from the same float32
    positions, losses and gradients it matches the float64 direct form to 1e-4 in α (1e-5
    measured). The direct form in float32 (before) subtracted two sums of ~d/2 = 10⁶, whose
    rounding (ulp 0.125) put α off by 0.011 and 0.082 here (0.918 for 0.907, 0.380 for
    0.462), and at 0.88 for an exact 1.0 on a 3M-parameter DLN."""
    d = 2**21
    h = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, d), jnp.float32)
    nbeta, gamma, eps = 10.0, 1.0, 1e-3
    post = localized_posterior(
        lambda w, batch: 0.5 * jnp.sum(h * w**2), jnp.zeros(d), nbeta=nbeta, localization=gamma
    )

    @jax.jit
    def accept(w, v, lw, gw, lv, gv):
        return sgld_acceptance(post, w, v, None, eps, (lw, gw), (lv, gv))

    probs = []
    for seed in range(3):
        k1, k2 = jax.random.split(jax.random.key(seed))
        w = jax.random.normal(k1, (d,)) / jnp.sqrt(nbeta * h + gamma)
        new = sgld(post).step(k2, sgld(post).init(w), None, eps)[0].position
        (lw, gw), (lv, gv) = post.value_and_grad(w, None), post.value_and_grad(new, None)
        x, y, g0, g1 = (np.asarray(a, np.float64) for a in (w, new, gw, gv))
        log_ratio = (
            nbeta * (float(lw) - float(lv)) + 0.5 * gamma * (x @ x - y @ y)
            - np.sum((x - y - 0.5 * eps * g1) ** 2) / (2 * eps)
            + np.sum((y - x - 0.5 * eps * g0) ** 2) / (2 * eps)
        )  # fmt: skip
        exact = min(1.0, np.exp(log_ratio))
        assert float(accept(w, new, lw, gw, lv, gv)) == pytest.approx(exact, abs=1e-4)
        probs.append(exact)
    assert min(probs) < 0.95  # the ratio matters, not clipped at 1


# --- the sampler registry: capabilities instead of name checks -------------------------------

BUILTIN_CAPABILITIES = {
    "sgld": SamplerCapabilities(sgld_transition=True),
    "rmsprop_sgld": SamplerCapabilities(adapts_during_burnin="adapt_steps"),
    "sgnht": SamplerCapabilities(),
    "mala": SamplerCapabilities(full_batch=True),
    "blackjax_sgld": SamplerCapabilities(sgld_transition=True),
    "blackjax_sgnht": SamplerCapabilities(),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_CAPABILITIES))
def test_builtin_capabilities(name):
    assert sampler_capabilities(name) == BUILTIN_CAPABILITIES[name]
    assert sampler_capabilities(SAMPLERS[name]) == BUILTIN_CAPABILITIES[name]  # by its factory


def test_sghmc_declares_its_noise_gain_from_its_friction():
    caps = sampler_capabilities("sghmc")
    assert caps._replace(noise_gain=None) == SamplerCapabilities()
    assert caps.noise_gain({}) == pytest.approx(10.0)  # 1/f at the default f = 0.1
    assert caps.noise_gain({"friction": 0.25}) == pytest.approx(4.0)


def test_blackjax_sghmc_declares_its_minibatch_heating():
    """blackjax.sghmc's momentum noise is √(2αh) per step against the gradient noise's h·c:
    1/α times SGLD's share (it declared none, so its step check ignored the heating)."""
    caps = sampler_capabilities("blackjax_sghmc")
    assert caps._replace(noise_gain=None) == SamplerCapabilities()
    assert caps.noise_gain({}) == pytest.approx(100.0)  # blackjax's default alpha = 0.01
    assert caps.noise_gain({"alpha": 0.2, "num_integration_steps": 3}) == pytest.approx(5.0)


def test_every_builtin_sampler_declares_its_capabilities_here():
    assert set(SAMPLERS) >= {*BUILTIN_CAPABILITIES, "sghmc", "blackjax_sghmc"}
    assert sampler_capabilities(lambda loss_fn, posterior: None) == SamplerCapabilities()
    with pytest.raises(ValueError, match=r"sampler='nuts' is unknown"):
        sampler_capabilities("nuts")


def test_samplers_view_is_read_only():
    with pytest.raises(TypeError):
        SAMPLERS["mine"] = SAMPLERS["sgld"]  # type: ignore[index]
    assert jaxslt.SAMPLERS is SAMPLERS and jaxslt.register_sampler is register_sampler


@pytest.fixture
def register():
    """register_sampler, with every name it added removed afterwards."""
    names = []

    def add(name, factory, capabilities=None, **kw):
        register_sampler(name, factory, capabilities, **kw)
        names.append(name)

    yield add
    for name in names:
        if name in SAMPLERS:
            unregister_sampler(name)


def _regression():
    x = jax.random.normal(jax.random.key(5), (300, 2))
    y = x @ jnp.array([1.0, -0.5]) + 0.3 * jax.random.normal(jax.random.key(6), (300,))

    def loss_fn(params, batch):
        xb, yb = batch
        return jnp.mean((xb @ params["w"] - yb) ** 2)

    return loss_fn, {"w": jnp.array([1.0, -0.5])}, (x, y)


def _run(sampler, **kw):
    loss_fn, params, data = _regression()
    run = dict(key=jax.random.key(2), step_size=1e-4, num_chains=2, num_draws=20, num_burnin=10,
               progress=False, diagnostics=False)  # fmt: skip
    return jaxslt.estimate_llc(loss_fn, params, data, sampler=sampler, **(run | kw))


def _my_sgld(loss_fn, posterior):
    del loss_fn
    return sgld(posterior)


def test_a_registered_sgld_variant_gets_the_mala_checks(register):
    register("my_sgld", _my_sgld, SamplerCapabilities(sgld_transition=True))
    mine, builtin = _run("my_sgld"), _run("sgld")
    assert np.isfinite(mine.mala_accept).all()
    np.testing.assert_array_equal(mine.mala_accept, builtin.mala_accept)
    np.testing.assert_array_equal(mine.loss_trace, builtin.loss_trace)

    def undeclared(loss_fn, posterior):  # the same kernel, no capabilities: no checks
        return _my_sgld(loss_fn, posterior)

    assert np.isnan(_run(undeclared).mala_accept).all()
    undeclared.capabilities = SamplerCapabilities(sgld_transition=True)  # a factory's own
    np.testing.assert_array_equal(_run(undeclared).mala_accept, builtin.mala_accept)


def test_a_registered_full_batch_sampler_runs_on_all_the_data(register):
    seen = []

    def probe(loss_fn, posterior):
        kernel = _my_sgld(loss_fn, posterior)

        def step(rng_key, state, minibatch, step_size):
            seen.append(jax.tree.leaves(minibatch)[0].shape[0])  # at trace time
            return kernel.step(rng_key, state, minibatch, step_size)

        return SamplingKernel(kernel.init, step)

    register("full_probe", probe, SamplerCapabilities(full_batch=True))
    _run("full_probe")
    assert seen and set(seen) == {300}  # n, not the default min(n, 256)
    with pytest.raises(ValueError, match=r"sampler='full_probe' is full-batch.*not 10"):
        _run("full_probe", batch_size=10)
    probe.capabilities = SamplerCapabilities(full_batch=True)  # unregistered, by attribute
    with pytest.raises(ValueError, match=r"is full-batch.*batch_size=None or batch_size=300"):
        validation.check_sampler(probe, None, batch_size=10, n=300)


def test_replacing_a_registered_sampler_drops_programs_compiled_for_the_old_one(register):
    register("swap", _my_sgld)
    _run("swap")
    traced = []

    def other(loss_fn, posterior):
        traced.append(True)
        return _my_sgld(loss_fn, posterior)

    register("swap", other, overwrite=True)
    _run("swap")  # estimate_llc's jit cache is keyed by the name
    assert traced


def test_a_name_registered_again_after_unregistering_compiles_afresh(register):
    register("again", _my_sgld)
    _run("again")
    unregister_sampler("again")
    traced = []

    def other(loss_fn, posterior):
        traced.append(True)
        return _my_sgld(loss_fn, posterior)

    register("again", other)  # not an overwrite, but the old program is cached under "again"
    _run("again")
    assert traced


def test_a_registered_sampler_adapts_during_burnin_and_declares_its_noise_gain(register):
    options_seen = []

    def adaptive(loss_fn, posterior, *, adapt_steps=None, decay=0.99):
        options_seen.append({"adapt_steps": adapt_steps, "decay": decay})
        return rmsprop_sgld(posterior, adapt_steps=adapt_steps, decay=decay)

    caps = SamplerCapabilities(adapts_during_burnin="adapt_steps", noise_gain=lambda o: 3.0)
    register("adaptive", adaptive, caps)
    result = _run("adaptive", sampler_options={"decay": 0.9})
    assert options_seen and all(o == {"adapt_steps": 10, "decay": 0.9} for o in options_seen)
    assert float(result.geometry.noise_gain) == 3.0
    options_seen.clear()
    _run("adaptive", sampler_options={"adapt_steps": 4}, num_draws=10)  # the user's value wins
    assert options_seen and all(o["adapt_steps"] == 4 for o in options_seen)


def _factory(loss_fn, posterior, *, friction=0.1):
    del loss_fn
    return sgld(posterior)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((3, _factory), TypeError, "name must be a non-empty string"),
        (("", _factory), TypeError, "name must be a non-empty string"),
        (("x", "sgld"), TypeError, "factory must be callable"),
        (("x", _factory, {"full_batch": True}), TypeError, "must be a jaxslt.SamplerCapabilities"),
        (("x", _factory, SamplerCapabilities(full_batch=1)), TypeError, "full_batch must be"),
        (("x", _factory, SamplerCapabilities(sgld_transition=None)), TypeError, "sgld_transition"),
        (("x", _factory, SamplerCapabilities(adapts_during_burnin=3)), TypeError, "option name"),
        (("x", _factory, SamplerCapabilities(adapts_during_burnin="steps")), ValueError,
         r"adapts_during_burnin='steps' is not an option of the factory"),
        (("x", _factory, SamplerCapabilities(noise_gain=2.0)), TypeError, "noise_gain must be"),
        (("sgld", _factory), ValueError, r"'sgld' is a built-in sampler; pass overwrite=True"),
    ],
)  # fmt: skip
def test_register_sampler_rejects(args, error, match):
    with pytest.raises(error, match=match):
        register_sampler(*args)
    assert "x" not in SAMPLERS and SAMPLERS["sgld"] is not _factory


def test_register_sampler_replaces_only_when_told(register):
    register("mine", _factory)
    assert sampler_capabilities("mine") == SamplerCapabilities()
    register("mine", _factory)  # the same registration again is fine
    with pytest.raises(ValueError, match=r"'mine' is already registered; pass overwrite=True"):
        register_sampler("mine", _factory, SamplerCapabilities(full_batch=True))
    register("mine", _factory, SamplerCapabilities(full_batch=True), overwrite=True)
    assert sampler_capabilities("mine").full_batch
    # a registered name is checked like a built-in one: options against the factory
    assert validation.check_sampler("mine", {"friction": 0.2}, batch_size=None, n=8) == {
        "friction": 0.2
    }
    with pytest.raises(ValueError, match=r"do not fit sampler='mine'"):
        validation.check_sampler("mine", {"decay": 0.2}, batch_size=None, n=8)
    unregister_sampler("mine")
    assert "mine" not in SAMPLERS
    with pytest.raises(KeyError, match="no sampler 'mine'"):
        unregister_sampler("mine")
    with pytest.raises(ValueError, match="built in and cannot be unregistered"):
        unregister_sampler("sgld")


def test_a_factory_capabilities_attribute_must_be_capabilities():
    def factory(loss_fn, posterior):
        return sgld(posterior)

    factory.capabilities = {"full_batch": True}
    with pytest.raises(TypeError, match="attribute capabilities must be"):
        sampler_capabilities(factory)
