"""Build side: data recipe, the torch model against a hand-computed reference, training behaviour."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moerm_build import data  # noqa: E402
from moerm_build.graphs.onnx_head import reference_head  # noqa: E402
from moerm_build.model import ModelArgs, MoEHead, positive_correlation, switch_load_balance  # noqa: E402
from moerm_build.release.onnx_export import head_weights  # noqa: E402
from moerm_build.train.train import Comparisons, TrainConfig, fit_head  # noqa: E402
from tests.conftest import DATA  # noqa: E402

needs_data = pytest.mark.skipif(not (DATA / "persona").is_dir(), reason="../shared/data not present")


def test_head_forward_equals_reference():
    torch.manual_seed(0)
    head = MoEHead(ModelArgs(n_features=12, n_experts=7, n_shared=2, top_k=3, expert_hidden=5))
    with torch.no_grad():
        head.router.bias.normal_()
        head.b1.normal_()
        head.b2.normal_()
        head.feat_mean.normal_()
        head.feat_std.uniform_(0.5, 2.0)
    h = torch.randn(9, 12)
    o = head(h)
    idx, gates, rewards = reference_head(h.double().numpy(), head_weights(head), 3)
    pi = np.zeros((9, 7))
    np.put_along_axis(pi, idx, gates, 1)
    np.testing.assert_allclose(o["gating_output"].detach().numpy(), pi, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(o["rewards"].detach().numpy(), idx, 1), rewards, atol=1e-5)
    w = torch.randn(7)
    ref = (pi * o["rewards"].detach().numpy() * w.numpy()).sum(1)  # s = sum_k pi_k w_k r_k by hand
    np.testing.assert_allclose(head.score(h, w).detach().numpy(), ref, atol=1e-5)
    g = o["gating_output"].detach()
    assert ((g > 0).sum(1) == 3 + 2).all() and torch.allclose(g.sum(1), torch.full((9,), 3.0))  # + 2 shared
    assert (g[:, 5:] == 1).all()  # the last n_shared experts: every input, gate 1


def test_reward_bound_squashes_each_experts_reward():
    torch.manual_seed(1)
    free = MoEHead(ModelArgs(n_features=12, n_experts=5, top_k=2, expert_hidden=4))
    bounded = MoEHead(ModelArgs(n_features=12, n_experts=5, top_k=2, expert_hidden=4, reward_bound=0.5))
    bounded.load_state_dict(free.state_dict())
    h = 3 * torch.randn(20, 12)
    r, rb = free.rewards(h).detach(), bounded.rewards(h).detach()  # (20, 5) each
    np.testing.assert_allclose(rb.numpy(), 0.5 * np.tanh(r.numpy() / 0.5), atol=1e-6)
    assert rb.abs().max() <= 0.5 < r.abs().max()
    torch.testing.assert_close(bounded(h)["gating_output"], free(h)["gating_output"])  # routing untouched


def test_top1_gate_keeps_router_gradient():
    head = MoEHead(ModelArgs(n_features=6, n_experts=4, top_k=1, expert_hidden=3))
    h = torch.randn(5, 6)
    head.score(h, torch.ones(4)).sum().backward()
    assert head.router.weight.grad.abs().sum() > 0


def test_aux_losses():
    probs = torch.full((8, 4), 0.25)
    idx = torch.arange(8).remainder(4).view(8, 1)
    assert switch_load_balance(probs, idx).item() == pytest.approx(1.0)  # uniform routing
    r = torch.randn(64, 1)
    assert positive_correlation(torch.cat([r, r], 1)).item() == pytest.approx(1.0, abs=1e-3)
    assert positive_correlation(torch.cat([r, -r], 1)).item() == pytest.approx(0.0, abs=1e-6)  # +/- pair ok


@needs_data
def test_persona_recipe_and_determinism():
    st = data.load_persona(DATA)
    assert st.axes == data.PERSONA16 and len(st.text) == 12802  # label_confidence >= 0.8
    a = data.persona_benchmark(st, n_users=20, seed=3)
    b = data.persona_benchmark(st, n_users=20, seed=3)
    assert all((x.w == y.w).all() and x.adapt == y.adapt and x.eval == y.eval for x, y in zip(a, b))
    comp = st.components()
    train = set(data.statement_split(st, "train").tolist())
    for u in a:
        nz = np.flatnonzero(u.w)
        assert len(nz) in (2, 3) and ((np.abs(u.w[nz]) >= 0.5) & (np.abs(u.w[nz]) <= 1.5)).all()
        assert len(u.adapt) == 50 and len(u.eval) == 100
        adapt_s = {s for p in u.adapt for s in p}
        eval_s = {s for p in u.eval for s in p}
        assert not adapt_s & eval_s and not (adapt_s | eval_s) & train  # disjoint, never trained on
        for c, r in u.adapt + u.eval:
            assert comp[c] @ u.w > comp[r] @ u.w  # chosen has the higher reward
            assert st.axis[c] in nz or st.axis[r] in nz  # at least one on a user axis


def planted_problem(n_users=60, per_user=60, A=4, seed=0):
    """Synthetic embeddings: statement s = y_s * e_axis + noise; users with planted axis weights."""
    rng = np.random.default_rng(seed)
    S = 200
    axis, y = rng.integers(0, A, S), rng.choice([-1.0, 1.0], S)
    emb = np.zeros((S, 8), dtype=np.float32)
    emb[np.arange(S), axis] = y
    emb[np.arange(S), A + axis] = 1.0  # what the statement is about (for the router)
    emb += 0.05 * rng.normal(size=emb.shape).astype(np.float32)
    W = rng.normal(size=(n_users, A)) * 1.5
    recs = []
    for u in range(n_users):
        for _ in range(per_user):
            a, b = rng.choice(S, 2, replace=False)
            ra, rb = W[u, axis[a]] * y[a], W[u, axis[b]] * y[b]
            c, r = (a, b) if ra > rb else (b, a)
            recs.append({"prompt": "", "chosen": str(c), "rejected": str(r), "user_id": f"u{u}", "source": "syn"})
    return emb, axis, y, W, recs


def test_user_aware_training_recovers_planted_users():
    emb, axis, y, W, recs = planted_problem()
    comps = Comparisons.build(recs)
    table = torch.from_numpy(emb[[int(r) for _, r in comps.pairs]])
    cfg = TrainConfig(n_experts=8, n_shared=0, top_k=2, expert_hidden=8, epochs=30, batch_size=256, lr=1e-2)
    head, mode, hist = fit_head(cfg, comps, lambda i: table[i], np.zeros(8), np.ones(8))
    assert mode == "user_aware"
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3  # the losses go down
    # each learned user's utility of the axis prototypes (+e_a) tracks the planted weights
    proto = torch.zeros(4, 8)
    proto[range(4), range(4)] = 1.0
    proto[range(4), range(4, 8)] = 1.0
    with torch.no_grad():
        f = head(proto)["phi"] - head(torch.cat([-proto[:, :4], proto[:, 4:]], 1))["phi"]  # (A, K)
        learned = (head.w0 + head.user_weights) @ f.T  # (U, A): utility of +axis minus -axis
    order = [comps.user_ids.index(f"u{u}") for u in range(len(W))]
    corr = [np.corrcoef(learned[i].numpy(), W[u])[0, 1] for u, i in enumerate(order)]
    assert np.median(corr) > 0.9


def test_mixture_mode_without_user_ids_learns():
    emb, axis, y, W, recs = planted_problem(n_users=2, per_user=300, seed=1)
    for r in recs:
        del r["user_id"]
    comps = Comparisons.build(recs)
    table = torch.from_numpy(emb[[int(r) for _, r in comps.pairs]])
    cfg = TrainConfig(n_experts=8, n_shared=0, top_k=2, expert_hidden=8, epochs=20, batch_size=128, lr=1e-2, n_types=2)
    head, mode, hist = fit_head(cfg, comps, lambda i: table[i], np.zeros(8), np.ones(8))
    assert mode == "mixture" and head.type_weights.shape == (2, 8)
    assert hist[-1]["bt"] < hist[0]["bt"] - 0.1


def test_trl_jsonl_loader(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text(
        '{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "user_id": 7}\n\n'
        '{"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hey"}],'
        ' "rejected": "No."}\n')
    recs = data.load_jsonl(f)
    assert recs[0] == {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "source": "prefs", "user_id": "7"}
    assert recs[1]["prompt"] == "user: Hi?" and recs[1]["chosen"] == "assistant: Hey" and "user_id" not in recs[1]
    f.write_text('{"prompt": "x", "chosen": " ", "rejected": "y"}\n')
    with pytest.raises(ValueError, match="empty"):
        data.load_jsonl(f)


@needs_data
@pytest.mark.parametrize("load,key", [(data.load_hh_harmless, "prompt"), (data.load_finegrained_qa, "prompt"),
                                      (data.load_topical_chat, "prompt")])
def test_real_loaders_hold_out_by_prompt(load, key):
    train, test = load(DATA, split="train"), load(DATA, split="test")
    assert train and test and len(load(DATA, split="all")) == len(train) + len(test)
    assert not {r[key] for r in train} & {r[key] for r in test}  # nothing leaks across the split
    for r in train[:200] + test[:200]:
        assert r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]


@needs_data
def test_relabeled_hh_is_eval_only():
    recs = data.load_relabeled_hh(DATA)
    assert {r["user_id"] for r in recs} == {"helpful", "harmless"}
    with pytest.raises(ValueError, match="licence"):
        from moerm_build.train.train import load_records

        load_records(TrainConfig(sources=["relabeled_hh"]))


def test_population_prior_is_the_inverse_spread_of_training_users():
    head = MoEHead(ModelArgs(n_features=8, n_experts=4, top_k=2, expert_hidden=4, n_users=5000))
    scale = torch.tensor([1.0, 0.5, 0.1, 0.01])  # users disagree a lot on expert 0, hardly on expert 3
    with torch.no_grad():
        head.user_weights.copy_(torch.randn(5000, 4) * scale)
    P = head.prior_precision(ridge=0.0)
    np.testing.assert_allclose(np.diag(np.linalg.inv(P)), (scale**2).numpy(), rtol=0.1)
    np.testing.assert_allclose(P, P.T)
    assert MoEHead(ModelArgs(n_features=8, n_experts=4, n_users=5)).prior_precision() is None  # too few users


def test_training_is_reproducible_bit_for_bit():
    """Two runs of the loop give identical weights (at this size, without deterministic algorithms they
    differ: multi-threaded CPU scatter-adds sum in a varying order)."""
    from moerm_build.train.train import deterministic_torch

    rng = np.random.default_rng(0)
    T, H = 4000, 384
    table = torch.from_numpy(rng.normal(size=(T, H)).astype(np.float32))
    recs = [{"prompt": "", "chosen": str(a), "rejected": str(b), "user_id": f"u{i % 50}", "source": "s"}
            for i, (a, b) in enumerate(rng.integers(0, T, size=(6000, 2))) if a != b]
    comps = Comparisons.build(recs)
    emb = table[[int(r) for _, r in comps.pairs]]
    cfg = TrainConfig(n_experts=32, top_k=2, expert_hidden=64, epochs=2, batch_size=512)
    runs = []
    for _ in range(2):
        with deterministic_torch(True):
            runs.append(fit_head(cfg, comps, lambda i: emb[i], np.zeros(H), np.ones(H))[0].state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the block


def test_a_student_keeps_the_layers_it_names_and_loads_as_an_encoder(tiny_bert, tmp_path):
    """Backbone.keep_layers: the distillation student of moerm_build.train.finetune (keep_layers) is the
    teacher's chosen layers, written and read back like any encoder folder, scoring the same."""
    from moerm_build.model import Backbone
    from moerm_build.train.finetune import save_encoder

    teacher, student = Backbone(tiny_bert), Backbone(tiny_bert)
    student.keep_layers([1])
    assert len(student.encoder.encoder.layer) == 1 and student.encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(student.encoder.encoder.layer[0].state_dict(),
                               teacher.encoder.encoder.layer[1].state_dict())
    save_encoder(student, tiny_bert, tmp_path / "student")
    again = Backbone(tmp_path / "student")
    feed = {"input_ids": torch.tensor([[2, 5, 7, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
            "token_type_ids": torch.zeros(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**feed), student.eval()(**feed))
        assert not torch.allclose(student(**feed), teacher.eval()(**feed))  # one layer fewer: another encoder
    for bad in ([], [1, 0], [0, 0], [2]):
        with pytest.raises(ValueError, match="keep_layers"):
            Backbone(tiny_bert).keep_layers(bad)


def test_layer_gap_compares_each_student_layer_with_the_teacher_layer_it_stands_for(tiny_bert):
    """finetune's ``hidden`` loss: zero for the teacher against itself, one for a student that outputs zeros,
    blind to padded tokens, and the states end in what the backbone pools."""
    from moerm_build.model import Backbone, mean_pool
    from moerm_build.train.finetune import layer_gap

    teacher, student = Backbone(tiny_bert).eval(), Backbone(tiny_bert).eval()
    student.keep_layers([1])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    feed = {"input_ids": torch.tensor([[2, 5, 7, 3], [2, 6, 0, 0]]), "attention_mask": mask,
            "token_type_ids": torch.zeros(2, 4, dtype=torch.long)}
    with torch.no_grad():
        t, s = teacher.states(**feed), student.states(**feed)
        assert len(t) == 3 and len(s) == 2  # the embeddings and each layer's output
        torch.testing.assert_close(mean_pool(t[-1], mask), teacher(**feed))
        assert layer_gap(t, t, mask, [1, 2]).item() == 0.0
        gap = layer_gap(s, t, mask, [2]).item()
        assert 0 < gap < 1
        assert layer_gap(tuple(torch.zeros_like(x) for x in s), t, mask, [2]).item() == pytest.approx(1.0)
        padded = tuple(x.clone() for x in s)
        padded[1][1, 2:] = 100.0  # what a padded token holds does not count
        assert layer_gap(padded, t, mask, [2]).item() == pytest.approx(gap)
        assert layer_gap(s, t, mask, [1]).item() != pytest.approx(gap)  # which teacher layer matters


def test_finetune_refuses_the_distillation_loss_next_to_a_reward(tmp_path):
    from moerm_build.train.finetune import FinetuneConfig, finetune

    with pytest.raises(ValueError, match="bradley_terry"):
        finetune(FinetuneConfig(hidden=1.0), tmp_path / "run")  # bradley_terry defaults to 1
    assert not (tmp_path / "run").exists()  # refused before anything is written
