"""The LM trainer's building blocks against hand computations (mopo_core/lm_losses.py)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mopo_core.lm import losses
from mopo_core.tabular.solver import TiltFamily
from tests.reference_solvers import robust_bound_slsqp

VOCAB = 11
PAD = 0
# (prompt tokens, response tokens) of different lengths
EXAMPLES = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10]), ([2, 9], [3]), ([5, 5, 1, 7], [2, 6, 4])]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=32,
                                     bos_token_id=None, eos_token_id=None)
    return transformers.GPT2LMHeadModel(config).double().eval()


def pad_batch(examples, side):
    """Padded input_ids, attention_mask and response_mask (B, T) for (prompt, response) lists."""
    width = max(len(p) + len(r) for p, r in examples)
    ids, attn, resp = [], [], []
    for prompt, response in examples:
        tokens = prompt + response
        fill = [PAD] * (width - len(tokens))
        is_resp = [0] * len(prompt) + [1] * len(response)
        zeros = [0] * len(fill)
        if side == "left":
            ids.append(fill + tokens), attn.append(zeros + [1] * len(tokens)), resp.append(zeros + is_resp)
        else:
            ids.append(tokens + fill), attn.append([1] * len(tokens) + zeros), resp.append(is_resp + zeros)
    return torch.tensor(ids), torch.tensor(attn), torch.tensor(resp)


def hand_logprob(model, prompt, response):
    """log pi(response | prompt) with an explicit loop over the unpadded sequence."""
    tokens = prompt + response
    logits = model(input_ids=torch.tensor([tokens])).logits[0]
    total = 0.0
    for t in range(len(prompt), len(tokens)):
        total = total + torch.log_softmax(logits[t - 1], dim=-1)[tokens[t]]
    return total


# --------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_logprobs_matches_hand_loop(model, side):
    batch = pad_batch(EXAMPLES, side)
    with torch.no_grad():
        got = losses.sequence_logprobs(model, *batch)
        chunked = losses.sequence_logprobs(model, *batch, chunk_size=2)
        expected = torch.stack([hand_logprob(model, p, r) for p, r in EXAMPLES])
    assert got.shape == (len(EXAMPLES),)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked, got, rtol=0, atol=1e-10)


def test_chunked_matches_unchunked_in_float32_with_gradients():
    torch.manual_seed(1)
    logits = torch.randn(3, 9, 50, requires_grad=True)
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.zeros(3, 9, dtype=torch.long)
    mask[:, 3:] = 1
    full = losses.response_logprobs(logits, ids, mask)
    (g_full,) = torch.autograd.grad(full.sum(), logits)
    for chunk in (1, 3, 4):
        part = losses.response_logprobs(logits, ids, mask, chunk_size=chunk)
        (g_part,) = torch.autograd.grad(part.sum(), logits)
        torch.testing.assert_close(part, full, rtol=0, atol=1e-5)
        torch.testing.assert_close(g_part, g_full, rtol=0, atol=1e-6)


def test_low_precision_logits_are_upcast_per_chunk():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 40).to(torch.bfloat16)
    ids = torch.randint(0, 40, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[:, 0] = 0
    got = losses.response_logprobs(logits, ids, mask, chunk_size=2)
    expected = losses.response_logprobs(logits.double(), ids, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_response_token_at_position_zero_is_rejected():
    with pytest.raises(ValueError, match="position 0"):
        losses.response_logprobs(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3))


# --------------------------------------------------------------------------- fused log-probs

TINY = 16  # hidden size of the tiny architectures below


def tiny_lm(arch: str, vocab: int = 37, seed: int = 0):
    """A 1-layer causal LM of ``arch`` built from its config, fp32, eval mode."""
    configs = {
        "gpt2": lambda: transformers.GPT2Config(n_layer=1, n_embd=TINY, n_head=2, n_positions=64),
        "llama": lambda: transformers.LlamaConfig(hidden_size=TINY, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, num_key_value_heads=1,
                                                  max_position_embeddings=64, tie_word_embeddings=True),
        "opt": lambda: transformers.OPTConfig(hidden_size=TINY, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                              word_embed_proj_dim=TINY, max_position_embeddings=64),
        # OPT-350m's layout: post-norm layers and a projection after the body
        "opt-project-out": lambda: transformers.OPTConfig(hidden_size=TINY, ffn_dim=32, num_hidden_layers=1,
                                                          num_attention_heads=2, word_embed_proj_dim=8,
                                                          do_layer_norm_before=False, max_position_embeddings=64),
        "gpt-neox": lambda: transformers.GPTNeoXConfig(hidden_size=TINY, intermediate_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, max_position_embeddings=64),
        "gemma2": lambda: transformers.Gemma2Config(hidden_size=TINY, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                                    max_position_embeddings=64, final_logit_softcapping=30.0),
    }
    config = configs[arch]()
    config.vocab_size, config.bos_token_id, config.eos_token_id, config.pad_token_id = vocab, None, None, None
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).float().eval()


def random_batch(side: str, vocab: int = 37, seed: int = 0):
    """Padded (input_ids, attention_mask, response_mask) (5, <= 12), one row without a response."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [(3, 5), (1, 8), (6, 2), (4, 0), (2, 9)]  # (prompt, response) lengths
    tokens = [torch.randint(1, vocab, (p + r,), generator=gen).tolist() for p, r in lengths]
    examples = [(t[:p], t[p:]) for t, (p, _) in zip(tokens, lengths)]
    return pad_batch(examples, side)


def logprobs_and_grads(model, batch, **kwargs):
    """sequence_logprobs (B,) and the gradient of a weighted sum of them w.r.t. each trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    logp = losses.sequence_logprobs(model, *batch, **kwargs)
    weights = torch.linspace(0.5, 1.5, logp.numel())
    return logp.detach(), torch.autograd.grad((weights * logp).sum(), params)


def assert_fused_matches_plain(model, batch, chunk_size=None):
    assert losses.lm_body_and_head(model) is not None
    plain, g_plain = logprobs_and_grads(model, batch, fused=False)
    fused, g_fused = logprobs_and_grads(model, batch, fused=True, chunk_size=chunk_size)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt", "opt-project-out", "gpt-neox"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_fused_logprobs_and_gradients_match_plain(arch, side):
    model = tiny_lm(arch)
    batch = random_batch(side)
    assert_fused_matches_plain(model, batch)  # one chunk
    assert_fused_matches_plain(model, batch, chunk_size=3)  # several, the last one short


def test_fused_is_the_default_and_matches_the_hand_loop(model):
    """The double-precision GPT-2 fixture: the default path is the fused one, exact to rounding."""
    assert losses.lm_body_and_head(model) is not None
    batch = pad_batch(EXAMPLES, "left")
    with torch.no_grad():
        expected = torch.stack([hand_logprob(model, p, r) for p, r in EXAMPLES])
        torch.testing.assert_close(losses.sequence_logprobs(model, *batch, chunk_size=2), expected, rtol=0, atol=1e-10)


def test_row_without_response_tokens_scores_zero():
    model = tiny_lm("llama")
    batch = random_batch("right")
    empty = torch.zeros_like(batch[2])
    assert losses.sequence_logprobs(model, *batch)[3].item() == 0.0
    logp, grads = logprobs_and_grads(model, (batch[0], batch[1], empty))
    assert torch.equal(logp, torch.zeros(5)) and all(not g.any() for g in grads)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fused_matches_plain_through_a_lora_wrapper(arch):
    peft = pytest.importorskip("peft")
    model = tiny_lm(arch)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                             fan_in_fan_out=arch == "gpt2")
    wrapped = peft.get_peft_model(model, config)
    assert_fused_matches_plain(wrapped, random_batch("left"), chunk_size=4)
    with wrapped.disable_adapter():
        torch.testing.assert_close(losses.sequence_logprobs(wrapped, *random_batch("left")),
                                   losses.sequence_logprobs(model, *random_batch("left"), fused=False))


def test_models_whose_logits_are_not_a_plain_head_take_the_plain_path():
    peft = pytest.importorskip("peft")
    batch = random_batch("left")
    capped = tiny_lm("gemma2")  # final_logit_softcapping
    assert losses.lm_body_and_head(capped) is None
    torch.testing.assert_close(losses.sequence_logprobs(capped, *batch), losses.sequence_logprobs(capped, *batch, fused=False))
    with pytest.raises(ValueError, match="fused=True"):
        losses.sequence_logprobs(capped, *batch, fused=True)
    untied = tiny_lm("gpt-neox")
    head = next(name for name, m in untied.named_modules() if m is untied.get_output_embeddings())
    lora_head = peft.get_peft_model(untied, peft.LoraConfig(r=2, target_modules=[head, "dense"]))
    assert losses.lm_body_and_head(lora_head) is None


def test_compile_flag_and_environment_variable_select_the_compiled_chunk(monkeypatch):
    calls = []

    def fake_compiled():
        def run(*args):
            calls.append(args[0].shape[0])
            return losses._head_token_logprobs(*args)
        return run

    monkeypatch.setattr(losses, "_compiled_head_token_logprobs", fake_compiled)
    model, batch = tiny_lm("llama"), random_batch("left")
    expected = losses.sequence_logprobs(model, *batch)
    assert calls == []
    torch.testing.assert_close(losses.sequence_logprobs(model, *batch, compile=True), expected)
    assert calls == [int((batch[2][:, 1:] & batch[1][:, 1:]).sum())]
    monkeypatch.setenv(losses.COMPILE_ENV, "1")
    torch.testing.assert_close(losses.sequence_logprobs(model, *batch, chunk_size=10), expected)
    assert len(calls) == 4  # 1 + ceil(24 / 10)


def peak_allocated_mib(fn) -> float:
    """Peak of the bytes torch's CPU allocator holds, above the start, while ``fn()`` runs (MiB):
    the running sum of the profiler's allocation and free events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def test_fused_path_peak_memory_is_far_below_plain():
    """V = 32000, 8 x 128 tokens, half of them response, forward + backward: the plain path holds
    (8, 128, 32000) float32 logits (125 MiB) several times over, the fused one (64, 32000) chunks."""
    model = tiny_lm("llama", vocab=32000)
    ids = torch.randint(0, 32000, (8, 128), generator=torch.Generator().manual_seed(0))
    attention, response = torch.ones_like(ids), torch.zeros_like(ids)
    response[:, 64:] = 1

    def step(fused):
        losses.sequence_logprobs(model, ids, attention, response, 64, fused=fused).sum().backward()
        model.zero_grad(set_to_none=True)

    fused, plain = peak_allocated_mib(lambda: step(True)), peak_allocated_mib(lambda: step(False))
    assert plain > 350, (fused, plain)
    assert fused < plain / 8, (fused, plain)


# --------------------------------------------------------------------------- weighted BC gradients


def test_weighted_bc_gradient_is_the_hand_weighted_score(model):
    """grad of weighted_bc_loss == -mean_i w_i grad log pi(y_i|x_i), per-example grads by autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(3)
    w = rng.uniform(size=(2, len(EXAMPLES)))
    weights, _ = losses.mopo_weights(w, [0.8], 0.3, group=[0, 0, 1, 1])

    loss = losses.weighted_bc_loss(losses.sequence_logprobs(model, *pad_batch(EXAMPLES, "left")), weights)
    got = torch.autograd.grad(loss, params)

    expected = [torch.zeros_like(p) for p in params]
    for wi, (prompt, response) in zip(weights, EXAMPLES):
        per_example = torch.autograd.grad(hand_logprob(model, prompt, response), params)
        for acc, g in zip(expected, per_example):
            acc -= wi.item() * g / len(EXAMPLES)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_weights_carry_no_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    weights = torch.tensor([0.5, 1.5], requires_grad=True)
    losses.weighted_bc_loss(logp, weights).backward()
    assert weights.grad is None
    torch.testing.assert_close(logp.grad, torch.tensor([-0.25, -0.75]))


def test_tabular_weighted_bc_gradient_is_algorithm1_step():
    """Full support weighted by pi_ref: grad = nu * (softmax(theta) - pi_lam), the tabular Algorithm 1 gradient."""
    rng = np.random.default_rng(4)
    m, n, tau, lam = 3, 5, 0.25, np.array([0.7, 1.3])
    reference = rng.dirichlet(np.ones(n), size=m)
    reference[1, 2] = 0.0  # a response outside the reference's support gets weight 0
    reference /= reference.sum(axis=1, keepdims=True)
    rates = rng.uniform(size=(3, m, n))
    theta = torch.tensor(rng.normal(size=(m, n)), requires_grad=True)

    rows_m, rows_n = np.divmod(np.arange(m * n), n)
    with np.errstate(divide="ignore"):
        log_ref = np.log(reference)[rows_m, rows_n]
    weights, _ = losses.mopo_weights(rates[:, rows_m, rows_n], lam, tau, group=rows_m, log_importance=log_ref)
    logp = torch.log_softmax(theta, dim=1)[rows_m, rows_n]
    (grad,) = torch.autograd.grad(losses.weighted_bc_loss(logp, weights), theta)

    target = TiltFamily(rates[0], rates[1:], reference, np.full(m, 1 / m), tau).policy(lam)
    expected = (torch.softmax(theta, dim=1).detach().numpy() - target) / m
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-12)
    assert weights[(rows_m == 1) & (rows_n == 2)].item() == 0.0


# --------------------------------------------------------------------------- MOPO weights


def test_weights_match_explicit_formula_and_weigh_prompts_equally():
    rng = np.random.default_rng(5)
    group = np.array([7, 3, 7, 3, 3, 9])  # arbitrary, interleaved prompt ids; one singleton
    w = rng.uniform(size=(3, group.size))
    lam, tau = np.array([0.4, 2.0]), 0.5
    weights, ess = losses.mopo_weights(w, lam, tau, group)
    tilt = np.exp((w[0] + lam @ w[1:]) / tau)
    for g in np.unique(group):  # 3 prompts of 2, 3 and 1 rows: each sums to 6 / 3 = 2
        rows = group == g
        np.testing.assert_allclose(weights[rows].numpy(), 2.0 * tilt[rows] / tilt[rows].sum(), rtol=1e-12)
        assert weights[rows].sum().item() == pytest.approx(2.0, abs=1e-12)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-12)
    assert ess == pytest.approx(weights.sum().item() ** 2 / (weights**2).sum().item())
    assert weights.dtype == torch.float64 and not weights.requires_grad


def test_weights_invariant_to_per_prompt_shifts():
    rng = np.random.default_rng(6)
    group = np.repeat([0, 1, 2], 4)
    w = rng.uniform(size=(2, group.size))
    shift = rng.normal(size=3)[group]
    base, _ = losses.mopo_weights(w, [1.5], 0.2, group)
    for k in range(2):
        shifted = w.copy()
        shifted[k] += shift
        torch.testing.assert_close(losses.mopo_weights(shifted, [1.5], 0.2, group)[0], base, rtol=1e-12, atol=0)


def test_weights_tend_to_one_without_tilt_and_ess_is_batch_size():
    rng = np.random.default_rng(7)
    group = np.repeat([0, 1], 3)
    weights, ess = losses.mopo_weights(rng.uniform(size=(2, 6)), [0.0], 1e7, group)
    torch.testing.assert_close(weights, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)
    assert losses.effective_sample_size(torch.ones(6)) == 6.0
    assert losses.effective_sample_size(torch.ones(6), fraction=True) == 1.0
    assert losses.effective_sample_size(torch.tensor([0.0, 3.0, 0.0])) == 1.0
    assert ess == pytest.approx(6.0, abs=1e-6)


def test_weights_stable_for_sharp_tilts():
    """tau = 0.08 and a large multiplier span e^600: the naive exp overflows, log-space does not."""
    w = np.array([[0.0, 1.0, 0.5, 0.2], [1.0, 0.0, 0.5, 0.9]])
    weights, ess = losses.mopo_weights(w, [50.0], 0.08, [0, 0, 1, 1])
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.0, 0.0, 2.0], dtype=torch.float64))
    assert ess == pytest.approx(2.0)


def test_weights_reject_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        losses.mopo_weights(np.ones((2, 2)), [0.0], 0.0, [0, 0])
    with pytest.raises(ValueError, match="lam"):
        losses.mopo_weights(np.ones((3, 2)), [0.0], 1.0, [0, 0])
    with pytest.raises(ValueError, match="zero total weight"):
        losses.mopo_weights(np.ones((1, 2)), [], 1.0, [0, 0], log_importance=[-np.inf, -np.inf])


# --------------------------------------------------------------------------- dual updates


def test_constraint_estimates_by_hand():
    w_sec = np.array([[1.0, 0.0, 0.5, 0.25, 0.75]])
    weights = np.array([1.5, 0.5, 1.0, 2.0, 0.0])
    group = np.array([0, 0, 1, 1, 1])
    # prompt 0: (1.5*1 + 0.5*0) / 2 = 0.75; prompt 1: (0.5 + 0.5 + 0) / 3 = 1/3
    got = losses.constraint_estimates(w_sec, weights, group)
    torch.testing.assert_close(got, torch.tensor([(0.75 + 1 / 3) / 2], dtype=torch.float64))


def test_constraint_estimates_are_tabular_values_on_full_support():
    rng = np.random.default_rng(8)
    m, n, tau, lam = 2, 4, 0.3, np.array([0.9])
    reference = rng.dirichlet(np.ones(n), size=m)
    rates = rng.uniform(size=(2, m, n))
    rows_m, rows_n = np.divmod(np.arange(m * n), n)
    weights, _ = losses.mopo_weights(rates[:, rows_m, rows_n], lam, tau, rows_m,
                                log_importance=np.log(reference)[rows_m, rows_n])
    family = TiltFamily(rates[0], rates[1:], reference, np.full(m, 1 / m), tau)
    expected = family.dual(lam, np.zeros(1), order=1)[1]  # grad of the dual at b = 0 is V_sec(pi_lam)
    np.testing.assert_allclose(losses.constraint_estimates(rates[1:, rows_m, rows_n], weights, rows_m).numpy(),
                               expected, atol=1e-12)


def test_lambda_update_projects_to_nonnegative():
    lam = losses.lambda_update([0.5, 0.1], [0.2, 0.9], [0.6, 0.5], lr=1.0)
    torch.testing.assert_close(lam, torch.tensor([0.9, 0.0], dtype=torch.float64))
    assert (losses.lambda_update([0.0], [1.0], [0.0], lr=10.0) == 0).all()


def _robust_batch(seed, n_prompts=3, per_prompt=4):
    """Interleaved rows of equal-size prompts, plus the hand-built (G, N) table of rho * w_sec."""
    rng = np.random.default_rng(seed)
    group = np.tile(np.arange(n_prompts), per_prompt)
    w = rng.uniform(size=(2, group.size))
    weights, _ = losses.mopo_weights(w, [1.0], 0.4, group)
    z = np.stack([(weights.numpy() * w[1])[group == g] for g in range(n_prompts)])
    return w[1:], weights, group, z


def test_robust_bound_matches_primal_solver():
    w_sec, weights, group, z = _robust_batch(9)
    reference = np.full(z.shape, 1 / z.shape[1])
    for eps in (0.05, 0.3):
        lb, chi = losses.robust_lower_bounds(w_sec, weights, group, eps)
        assert lb.item() == pytest.approx(robust_bound_slsqp(z, reference, np.full(3, 1 / 3), eps), abs=1e-6)
        assert 0 < chi.item() < np.inf
    lb0, chi0 = losses.robust_lower_bounds(w_sec, weights, group, 0.0)
    torch.testing.assert_close(lb0, losses.constraint_estimates(w_sec, weights, group))
    assert chi0.item() == np.inf


def test_robust_bound_with_ragged_prompts_and_importance():
    """A prompt with rows of zero reference mass is the same bound as without those rows."""
    rng = np.random.default_rng(10)
    group = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    w = rng.uniform(size=(2, group.size))
    log_imp = rng.normal(size=group.size)
    keep = np.ones(group.size, bool)
    keep[[1, 5]] = False
    log_imp_dropped = np.where(keep, log_imp, -np.inf)
    full, _ = losses.mopo_weights(w, [0.6], 0.3, group, log_importance=log_imp_dropped)
    kept, _ = losses.mopo_weights(w[:, keep], [0.6], 0.3, group[keep], log_importance=log_imp[keep])
    for eps in (0.0, 0.1):
        a = losses.robust_lower_bounds(w[1:], full, group, eps, log_importance=log_imp_dropped)[0]
        b = losses.robust_lower_bounds(w[1:, keep], kept, group[keep], eps, log_importance=log_imp[keep])[0]
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_chi_updates_converge_to_the_optimal_dual():
    w_sec, weights, group, _ = _robust_batch(11)
    eps = 0.1
    lb, chi_star = losses.robust_lower_bounds(w_sec, weights, group, eps)
    chi = torch.ones(1, dtype=torch.float64)
    for _ in range(400):
        bound = losses.robust_constraint_estimates(chi, w_sec, weights, group, eps)
        assert bound.item() <= lb.item() + 1e-12  # the dual at any chi is a lower bound
        chi = losses.chi_update(chi, w_sec, weights, group, eps, lr=0.5)
    assert chi.item() == pytest.approx(chi_star.item(), rel=1e-4)
    assert losses.robust_constraint_estimates(chi, w_sec, weights, group, eps).item() == pytest.approx(lb.item(), abs=1e-9)
    assert losses.chi_update(torch.tensor([1e-3]), w_sec, weights, group, 50.0, lr=1.0).item() == 1e-8


# --------------------------------------------------------------------------- pairwise losses

LOGP_C = torch.tensor([-1.0, -2.0])
LOGP_R = torch.tensor([-1.5, -1.0])
REF_C = torch.tensor([-1.2, -1.8])
REF_R = torch.tensor([-1.4, -1.1])
BETA = 0.5
# h_c - h_r = [0.2 - (-0.1), -0.2 - 0.1] = [0.3, -0.3]; beta * gap = [0.15, -0.15]


def _softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_loss_by_hand_with_and_without_margin():
    expected = (_softplus(-0.15) + _softplus(0.15)) / 2
    assert losses.dpo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA).item() == pytest.approx(expected, rel=1e-6)
    margin = torch.tensor([0.1, 0.2])
    expected_margin = (_softplus(-(0.15 - 0.1)) + _softplus(-(-0.15 - 0.2))) / 2
    got = losses.dpo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA, margin=margin).item()
    assert got == pytest.approx(expected_margin, rel=1e-6)


def test_ipo_loss_by_hand():
    expected = ((0.3 - 1.0) ** 2 + (-0.3 - 1.0) ** 2) / 2
    assert losses.ipo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA).item() == pytest.approx(expected, rel=1e-6)


def test_ipo_with_soft_labels_by_hand_and_its_minimiser():
    # gaps z = (0.3, -0.3), c = 1/(2 beta) = 1; labels p = (0.25, 1).
    p = torch.tensor([0.25, 1.0], dtype=torch.float64)
    expected = ((0.25 * (0.3 - 1) ** 2 + 0.75 * (0.3 + 1) ** 2) + (-0.3 - 1) ** 2) / 2
    got = losses.ipo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA, p).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # hard labels: p = 0 is a plain IPO term with b chosen
    zero = losses.ipo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA, torch.zeros(2, dtype=torch.float64)).item()
    assert zero == pytest.approx(losses.ipo_loss(LOGP_R, LOGP_C, REF_R, REF_C, BETA).item(), rel=1e-6)
    # the loss in z = h_a - h_b is minimal at (2p - 1) c, whatever p: zero slope there, higher on both sides
    zero_t = torch.zeros(1, dtype=torch.float64)
    for label in (0.0, 0.3, 0.5, 0.9):
        def loss_at(value):
            z = torch.tensor([value], dtype=torch.float64, requires_grad=True)
            loss = losses.ipo_loss(z, zero_t, zero_t, zero_t, BETA, torch.tensor([label], dtype=torch.float64))
            loss.backward()
            return loss.item(), z.grad.item()

        best = (2 * label - 1) / (2 * BETA)
        value, slope = loss_at(best)
        assert slope == pytest.approx(0.0, abs=1e-12)
        assert loss_at(best - 0.1)[0] > value and loss_at(best + 0.1)[0] > value


def test_dpo_losses_do_not_differentiate_the_reference():
    ref_c = REF_C.clone().requires_grad_()
    logp_c = LOGP_C.clone().requires_grad_()
    losses.ipo_loss(logp_c, LOGP_R, ref_c, REF_R, BETA).backward()
    assert ref_c.grad is None
    # d/dh_c mean (gap - 1)^2 = (gap - 1) per pair
    torch.testing.assert_close(logp_c.grad, torch.tensor([0.3 - 1.0, -0.3 - 1.0]))


def test_weighted_dpo_loss_soft_and_multi_objective_labels():
    def dpo(a_first):
        args = (LOGP_C, LOGP_R, REF_C, REF_R) if a_first else (LOGP_R, LOGP_C, REF_R, REF_C)
        return losses.dpo_loss(*args, BETA)

    def soft(labels, **kwargs):
        return losses.weighted_dpo_loss(LOGP_C, LOGP_R, REF_C, REF_R, BETA, labels, **kwargs)

    torch.testing.assert_close(soft(torch.ones(2)), dpo(True))
    torch.testing.assert_close(soft(torch.zeros(2)), dpo(False))
    expected = (0.3 * _softplus(-0.15) + 0.7 * _softplus(0.15) + 0.3 * _softplus(0.15) + 0.7 * _softplus(-0.15)) / 2
    assert soft(torch.full((2,), 0.3)).item() == pytest.approx(expected, rel=1e-6)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(soft(labels, objective_weights=[0.25, 0.75]), soft(torch.tensor([0.25, 0.75])))
    with pytest.raises(ValueError, match="sum to 1"):
        soft(labels, objective_weights=[0.5, 0.75])


def test_sft_loss_sequence_and_token_means():
    logp = torch.tensor([-2.0, -6.0])
    assert losses.sft_loss(logp).item() == 4.0
    assert losses.sft_loss(logp, num_tokens=torch.tensor([1, 3])).item() == 2.0
