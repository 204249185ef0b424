"""Small helpers shared by tests (plain functions; fixtures live in conftest.py)."""
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


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
