import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

from loc_unlearn.data.formatting import IGNORE, collate, encode_qa, encode_rows, length_batches, prompt_text
from loc_unlearn.errors import DataError

CORPUS = ["Question: Where was Lena Corvid born?\nAnswer: Lena Corvid was born in Veloria, Ostmark.",
          "Question: What genre does Tomas Reyl write?\nAnswer: Tomas Reyl writes gothic mystery novels.",
          "user: assistant: Yes no maybe the of and in was born"] * 5


def make_tok(pad_is_eos=False):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, tr)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>",
                                pad_token="<eos>" if pad_is_eos else "<pad>")
    return t


def test_plain_format_layout_and_labels():
    t = make_tok()
    q, a = "Where was Lena Corvid born?", "Lena Corvid was born in Veloria, Ostmark."
    assert prompt_text(t, q) == f"Question: {q}\nAnswer:"
    e = encode_qa(t, q, a, max_length=256)
    p = t(f"Question: {q}\nAnswer:")["input_ids"]
    ans = t(" " + a, add_special_tokens=False)["input_ids"]
    assert e["input_ids"] == p + ans + [t.eos_token_id]
    assert e["n_prompt"] == len(p) and e["n_answer"] == len(ans)
    assert e["labels"] == [IGNORE] * len(p) + ans + [t.eos_token_id]
    assert t.decode(e["input_ids"][e["n_prompt"]: e["n_prompt"] + e["n_answer"]]) == " " + a


def test_pad_equal_eos_keeps_eos_inside_answer():
    t = make_tok(pad_is_eos=True)
    assert t.pad_token_id == t.eos_token_id
    rows = [{"question": "Yes?", "answer": "Yes <eos> no"},  # eos id inside the answer
            {"question": "What genre does Tomas Reyl write with a long question?", "answer": "gothic mystery novels in Veloria"}]
    items = encode_rows(t, rows, max_length=128)
    eos = t.eos_token_id
    assert eos in items[0]["input_ids"][items[0]["n_prompt"]: -1]  # the inner eos survived tokenization
    b = collate(items, pad_id=t.pad_token_id)
    for i, it in enumerate(items):
        n, npr, na = len(it["input_ids"]), it["n_prompt"], it["n_answer"]
        # independent expectation from lengths
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (b["input_ids"].shape[1] - n)
        lab = b["labels"][i].tolist()
        assert lab[:npr] == [IGNORE] * npr  # no prompt token trained
        assert lab[npr:n] == it["input_ids"][npr:n]  # every answer token (inner eos too) + final eos trained
        assert all(x == IGNORE for x in lab[n:])
        assert b["metric_mask"][i].nonzero().flatten().tolist() == list(range(npr, npr + na))
        assert b["input_ids"][i, n - 1].item() == eos
    inner = items[0]["input_ids"].index(eos, items[0]["n_prompt"])
    assert b["attention_mask"][0, inner] == 1 and b["labels"][0, inner] == eos and b["metric_mask"][0, inner]
    # labels never trained on padding even though pad == eos
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()


def test_chat_template_used():
    t = make_tok()
    t.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")
    q, a = "Where was Lena Corvid born?", "Lena Corvid was born in Veloria."
    text = prompt_text(t, q)
    assert text == f"<bos>user: {q}\nassistant:"
    e = encode_qa(t, q, a, max_length=256)
    p = t(text, add_special_tokens=False)["input_ids"]
    assert e["input_ids"][: e["n_prompt"]] == p and p[0] == t.bos_token_id
    assert e["input_ids"][e["n_prompt"]:] == t(a, add_special_tokens=False)["input_ids"] + [t.eos_token_id]


def test_truncation_cuts_answer_never_prompt():
    t = make_tok()
    q, a = "Where was Lena Corvid born?", "Lena Corvid was born in Veloria, Ostmark, and she liked gothic mystery novels."
    full = encode_qa(t, q, a)
    npr = full["n_prompt"]
    e = encode_qa(t, q, a, max_length=npr + 3)
    assert len(e["input_ids"]) == npr + 3 and e["n_answer"] == 3
    assert e["input_ids"] == full["input_ids"][: npr + 3]  # cut answer, no eos appended
    assert sum(x != IGNORE for x in e["labels"]) == 3
    e1 = encode_qa(t, q, a, max_length=npr + 1)
    assert e1["n_answer"] == 1  # never empty
    with pytest.raises(DataError, match="Lena Corvid born"):
        encode_qa(t, q, a, max_length=npr)
    with pytest.raises(DataError, match="empty"):
        encode_qa(t, q, "  ", max_length=64)


def test_length_batches_cover_and_deterministic():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (203,), generator=g).tolist()
    ev = length_batches(lengths, 16, shuffle=False)
    flat = [i for b in ev for i in b]
    assert sorted(flat) == list(range(203))
    assert [lengths[i] for i in flat] == sorted(lengths)
    assert all(len(b) == 16 for b in ev[:-1]) and len(ev[-1]) == 203 - 16 * 12
    a, b, c = (length_batches(lengths, 8, True, s) for s in (1, 1, 2))
    assert a == b and a != c
    for bs in (a, c):
        assert sorted(i for x in bs for i in x) == list(range(203))
    # bucketing: within-batch length spread is much smaller than for random batches
    spread = sum(max(lengths[i] for i in x) - min(lengths[i] for i in x) for x in a) / len(a)
    assert spread < 10
