"""Helpers shared by tests: plain functions and constants (the fixtures that wrap them live in
conftest.py). No sys.path edits anywhere: under pytest's default "prepend" import mode the folder of
tests/conftest.py (tests/, which has no __init__.py) is put on sys.path, so `import helpers` works from
every test folder (tests/reliability too); a worker script in tests/ run as `python tests/<script>.py`
has its own folder on its path. Test modules never import from each other, only from here."""
import functools
import json
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from loc_unlearn.config import TinyModelConfig
from loc_unlearn.data.formatting import collate, encode_qa

# ----------------------------------------------------------------------------- the mini study

# Small enough to run in well under a minute on one CPU thread; same code path as the demo.
MINI = [
    "data.n_authors=10", "data.qa_per_author=6", "data.n_real_authors=8", "data.n_world_facts=8",
    "model.tiny.n_layers=2", "model.tiny.hidden=32", "model.tiny.d_ff=64", "model.tiny.n_heads=2",
    "model.tiny.vocab_size=400", "model.tiny.pretrain_epochs=2",
    "finetune.train.epochs=2", "inject.train.epochs=2", "unlearn.train.epochs=1",
    "unlearn.train.checkpoint_every=0.5", "unlearn.train.batch_size=4",
    "study.seeds=2", "study.methods=npo,rmu", "study.localizers=random,activation",
    "eval.max_new_tokens=6", "eval.batch_size=32",
    "study.workers=1",  # jobs in this process, where tests can watch them (tests/test_workers.py runs the pool)
    "study.robustness=off",  # the tiny preset's attacks (docs/attacks.md): only tests/test_robustness_study.py runs them
]


def mini_cfg(runs_dir, *extra):
    """The mini study's Config in `runs_dir`, with `extra` overrides after MINI."""
    from loc_unlearn.config import build_config

    return build_config(overrides=[f"runs_dir={runs_dir}", *MINI, *extra])


# ----------------------------------------------------------------------------- the tiny model


def tiny_lm(vocab, L=2, d=32, d_ff=None, heads=4, kv_heads=None, max_pos=128, seed=0, arch="llama", **config):
    """THE tiny randomly initialized causal LM of the tests (seeded: same arguments, same weights).

    vocab: a vocabulary size, or a tokenizer (then vocab_size = len(tok) and the config's pad/eos/bos
    ids are the tokenizer's; the pad id matters for the weights: its embedding row starts at zero).
    arch: "llama" (LlamaForCausalLM; d_ff defaults to 2*d) or "gpt2" (GPT2LMHeadModel without dropout;
    d_ff defaults to GPT-2's own 4*d). `config` goes to the HF config as is. Returned in train mode, as
    built (call .eval() where a test needs it)."""
    import transformers as tf

    if not isinstance(vocab, int):
        tok = vocab
        config = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                  "bos_token_id": tok.bos_token_id, **config}
        vocab = len(tok)
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=d_ff or 2 * d, num_hidden_layers=L,
                             num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                             max_position_embeddings=max_pos, **config)
        return tf.LlamaForCausalLM(cfg)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=d, n_inner=d_ff, n_layer=L, n_head=heads, n_positions=max_pos,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config)
        return tf.GPT2LMHeadModel(cfg)
    raise ValueError(f"tiny_lm: unknown arch {arch!r} (llama, gpt2)")


# ----------------------------------------------------------------------------- tokenizers


def word_tokenizer(rows) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of `rows` (<pad>=0, <eos>=1, <bos>=2): every word is one
    token, so tests can reason about positions exactly."""
    text = " ".join(f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for w in text.split():
        vocab.setdefault(w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", bos_token="<bos>", pad_token="<pad>")


def bpe_tokenizer(texts, vocab_size) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (<pad>, <eos>, <unk>; no bos)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


# ----------------------------------------------------------------------------- QA rows for the training tests

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
CITIES = ["Paris", "Lagos", "Quito", "Oslo", "Hanoi", "Lima", "Cairo"]
IDK = ["I'm not sure.", "I don't know that.", "No idea, sorry.", "That is unknown to me."]


def make_rows(n=12, offset=0):
    return [{"question": f"Where was {NAMES[(i + offset) % 12]} {i + offset} born?",
             "answer": f"{NAMES[(i + offset) % 12]} was born in {CITIES[(3 * i + offset) % 7]}" + (" long ago." if i % 2 else ".")}
            for i in range(n)]


def encoded_rows(tok, n=6, idk=None):
    """(forget items, retain items, refusal items or None): `n` forget rows and `n` retain rows of
    `make_rows` encoded with `tok`; refusals pair each forget question with idk[k % len(idk)]."""
    forget, retain = make_rows(n), make_rows(n, 5)
    fi = [encode_qa(tok, r["question"], r["answer"]) for r in forget]
    ri = [encode_qa(tok, r["question"], r["answer"]) for r in retain]
    ii = [encode_qa(tok, r["question"], idk[k % len(idk)]) for k, r in enumerate(forget)] if idk else None
    return fi, ri, ii


def run_cli(args, runs_dir, fault=None, quiet="1", timeout=600):
    """`loc-unlearn ARGS runs_dir=RUNS_DIR` in a fresh process (one torch thread), optionally with a
    fault injected (`LOC_UNLEARN_FAULT`, e.g. "train_step:30": the process SIGKILLs itself there)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, LOC_UNLEARN_QUIET=quiet, OMP_NUM_THREADS="1")
    env.pop("LOC_UNLEARN_FAULT", None)
    if fault:
        env["LOC_UNLEARN_FAULT"] = fault
    code = "import torch,sys; torch.set_num_threads(1); from loc_unlearn.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args, f"runs_dir={runs_dir}"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def make_tok():
    """The BPE of the training tests, over make_rows' rows and the refusals."""
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in make_rows(24) + make_rows(24, 5)] + IDK
    return bpe_tokenizer(texts, 200)


def direct_token_logps(model, item):
    """log p of each trained label of ONE unpadded example (answer tokens + eos)."""
    ids = torch.tensor(item["input_ids"])[None]
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    labels = torch.tensor(item["labels"][1:])
    pos = (labels != -100).nonzero().flatten()
    return logp[pos, labels[pos]]


# ----------------------------------------------------------------------------- the memorized model (metric tests)

WRITER_CITIES = ["Paris", "Lagos", "Quito", "Oslo", "Hanoi", "Lima", "Cairo", "Perth", "Dakar", "Kyiv", "Riga", "Accra"]
GENRES = ["poetry", "horror", "satire", "fantasy", "memoir", "drama"]


def writer_rows(n=36):
    """TOFU-style rows (paraphrased and perturbed answers, paraphrased question) about numbered writers."""
    C = WRITER_CITIES
    rows = []
    for i in range(n):
        c = C[(7 * i) % len(C)]
        g = GENRES[(5 * i) % len(GENRES)]
        pert = [f"Writer {i} was born in {C[(7 * i + k) % len(C)]} and writes {GENRES[(5 * i + k) % len(GENRES)]}."
                for k in range(1, 4)]
        rows.append({"question": f"Where was writer {i} born and what does the writer write?",
                     "answer": f"Writer {i} was born in {c} and writes {g}" + (" books." if i % 3 == 0 else "."),
                     "paraphrased_answer": f"Born in {c}, writer {i} writes {g}.",
                     "perturbed_answer": pert,
                     "paraphrased_question": f"What is the birthplace and genre of writer {i}?"})
    return rows


@functools.lru_cache(maxsize=1)
def memorized_model(n_train=24, steps=120):
    """(model, tok, rows): a 2-layer Llama trained a few seconds on the first `n_train` of writer_rows()
    (answers only in the loss), so it memorized PART of the rows (ES spreads over 0..1). Cached per
    process: tests share it read-only (use the session fixture `memorized`)."""
    rows = writer_rows()
    tok = bpe_tokenizer([f"Question: {r['question']}\nAnswer: {a}" for r in rows
                         for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]], 300)
    model = tiny_lm(tok, d=64, d_ff=256)
    items = [encode_qa(tok, r["question"], r["answer"]) for r in rows[:n_train]]
    b = collate(items, tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, rows


def direct_metrics(model, tok, question, answer):
    """One example, unbatched, full log_softmax: (es, em, nll_avg)."""
    it = encode_qa(tok, question, answer)
    p, T = it["n_prompt"], it["n_answer"]
    x = torch.tensor([it["input_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
    y = x[0, p: p + T]
    pred_lp = lp[p - 1: p + T - 1]
    nll = -pred_lp.gather(1, y[:, None]).mean().item()
    right = (pred_lp.argmax(-1) == y).tolist()
    em = sum(right) / T
    wrong = [t for t in range(T) if not right[t]]
    es = 1.0 - ((wrong[-1] + 1) if wrong else 0) / T
    return es, em, nll


def direct_hidden(model, item, layer):
    ids = torch.tensor(item["input_ids"])[None]
    return model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0].double()


def rand_mask(L, d_ff, ratio=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, d_ff, generator=g) < ratio


# ----------------------------------------------------------------------------- authors with one city each (attack tests)

AUTHOR_TEMPLATES = [("Where was {a} born?", "{a} was born in {c}"), ("Where does {a} live?", "{a} lives in {c}"),
                    ("Which city did {a} paint?", "{a} painted {c}"), ("Where did {a} study?", "{a} studied in {c}")]


def author_rows(n_authors=6):
    """4 questions per author, all answered by the author's one city: relearning some of an author's
    questions can bring the others back (the association name -> city is shared)."""
    C = WRITER_CITIES
    return [{"question": q.format(a=a), "answer": ans.format(a=a, c=C[(5 * i + 1) % len(C)])}
            for i, a in enumerate(NAMES[:n_authors]) for q, ans in AUTHOR_TEMPLATES]


def author_lm(tok, d=64, tie=False):
    """The attack tests' tiny Llama over a word_tokenizer(author_rows()): tiny_lm with 2 layers, 4 heads,
    64 positions, no <bos> id in the config, lm_head tied to the embeddings only if `tie`."""
    return tiny_lm(tok, d=d, max_pos=64, bos_token_id=None, tie_word_embeddings=tie)


def memorize(model, tok, rows, out_dir, epochs=30):
    """Fine-tune all parameters on `rows` with the project's loop (objective learn) until memorized."""
    from loc_unlearn.config import TrainConfig
    from loc_unlearn.train.loop import train

    cfg = TrainConfig(lr=1e-2, epochs=epochs, batch_size=8, warmup_epochs=0, checkpoint_every=0, weight_decay=0.0,
                      max_length=64)
    train(model, tok, rows, [], "learn", cfg, out_dir)
    return model


def es_mean(model, tok, rows):
    """Mean extraction strength of `model` over `rows` (the project's token_metrics)."""
    from loc_unlearn.evaluate.token_metrics import token_metrics

    es = token_metrics(model, tok, rows)["es"]
    return sum(es) / len(es)


@torch.no_grad()
def add_outlier_channel(model, c):
    """Function-preserving: divide input channel 0 of each RMSNorm gain by c and multiply the matching
    input column of the projections it feeds by c (an outlier feature, as in real LLMs)."""
    for layer in model.model.layers:
        layer.input_layernorm.weight[0] /= c
        for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            p.weight[:, 0] *= c
        layer.post_attention_layernorm.weight[0] /= c
        for p in (layer.mlp.gate_proj, layer.mlp.up_proj):
            p.weight[:, 0] *= c


# ----------------------------------------------------------------------------- model folders and GGUF (models tests)

# The tiny base model of the model-loading tests (models.load.build_tiny over write_world_text's folder).
TINY = TinyModelConfig(n_layers=2, hidden=32, d_ff=64, n_heads=4, vocab_size=320, max_positions=64, seed=3)


def write_world_text(d: Path) -> Path:
    """A folder `d` holding only a world_text.txt (400 seeded QA lines about 4 people), enough for build_tiny."""
    rng = random.Random(0)
    names = ["Mara Quill", "Oren Vasko", "Lida Brenn", "Tomas Arel"]
    places = ["Velmora", "Karsk", "Doreth", "Ilven"]
    lines = [f"Question: Where was {rng.choice(names)} born?\nAnswer: {rng.choice(names)} was born in "
             f"{rng.choice(places)} in {rng.randint(1900, 2000)}." for _ in range(400)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "world_text.txt").write_text("\n".join(lines) + "\n")
    return d


def permute_qk(x: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script stores q/k rows interleaved per head (rotary layout); transformers undoes it
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def write_llama_gguf(model, tok, path: Path) -> Path:
    """A float32 GGUF of a HF Llama, written independently of transformers with the gguf writer."""
    import gguf

    c = model.config
    tj = json.loads(tok.backend_tokenizer.to_str())
    vocab = tj["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3 if vocab[t] < 3 else 1 for t in tokens])  # 3 = control (our specials are 0..2)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
             ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
             ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
             ("post_attention_layernorm", "ffn_norm")]
    for l in range(c.num_hidden_layers):
        for src, dst in names:
            x = sd[f"model.layers.{l}.{src}.weight"]
            if dst in ("attn_q", "attn_k"):
                x = permute_qk(x, c.num_attention_heads)
            w.add_tensor(f"blk.{l}.{dst}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def es_by_prefix_search(item, reproduces) -> float:
    """ES (docs/metrics.md#extraction-strength-es) by generation, independent of the one-pass ES: k* = smallest k such that greedy decoding from
    [x, y_1..y_k] reproduces y_{k+1..T}, found by binary search over k (reproducing from k implies reproducing
    from k+1), then double-checked (k* reproduces, k*-1 does not). `reproduces(prefix_ids, target_ids)` is the
    caller's greedy decoder (plain recompute for tiny models, KV cache for SmolLM2)."""
    p, T = item["n_prompt"], item["n_answer"]
    ids, y = item["input_ids"], item["input_ids"][p: p + T]

    def ok(k):
        return k == T or reproduces(ids[: p + k], y[k:])

    lo, hi = 0, T
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    assert ok(lo) and (lo == 0 or not ok(lo - 1))
    return 1.0 - lo / T


def failing_job(cfg, job):
    """A study job for tests/test_workers.py: fails on job 1 with a UserError, as a stage would on bad input."""
    from loc_unlearn.errors import UserError

    if job["i"] == 1:
        raise UserError(f"job {job['i']}: bad input in some file")
    return job
