"""Builders of tiny random Hugging Face sequence classifiers (plus matching fast tokenizers).

Each builder writes a standard HF folder (``config.json``, ``model.safetensors``, tokenizer files)
with ``save_pretrained``, small enough (hidden 32, 2 layers) that exporting it takes seconds.

    build_tiny_model("xlm-roberta", tmp / "xlmr", num_labels=3)
    build_bi_encoder(tmp / "bi")        # a bare BertModel saved sentence-transformers style
    build_decoder(tmp / "gpt2")         # a tiny causal LM

Tokenizers are made here, not downloaded: a WordPiece vocabulary (BERT, ELECTRA), a Unigram
model with the family's pair template (XLM-RoBERTa ``<s> A </s></s> B </s>``, DeBERTa-v2
``[CLS] A [SEP] B [SEP]``) and a byte-level BPE (ModernBERT), all from the small corpus below.
Imports transformers/torch lazily so that collecting tests stays cheap.
"""
from __future__ import annotations

import json
from pathlib import Path

ARCHS = ("bert", "xlm-roberta", "roberta", "electra", "deberta-v2", "modernbert")

# Words the tiny vocabularies are built from; anything else splits into characters/bytes.
_CORPUS = """
the a an of to in and or for on with by from as is are was were be been it this that these those
how what when where why which who do does did can could should would will may might must not no yes
data file files export import format formats csv json settings page account user users password
reset email send receive message billing invoice invoices payment card bank transfer refund order
orders shipping delivery track package return returns product products price prices discount code
search query document documents passage passages rank ranking model models score scores relevant
river mountain city country capital population weather rain snow sun summer winter cooking recipe
bread oven bake flour water salt sugar coffee tea milk train bus ticket station airport flight
hotel room book booking cancel change time date hour day week month year history war king queen
science physics chemistry biology cell cells gene protein energy light speed planet star moon earth
computer software install update version error network server database memory disk cpu python
code function class test tests run running build page pages learn learning student school teacher
health doctor medicine sleep exercise heart blood study studies result results patients treatment
""".split()

_ACTIVATION_CLASSES = {
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "identity": "torch.nn.modules.linear.Identity",
    "softmax": "torch.nn.modules.activation.Softmax",
}


def _chars() -> list[str]:
    return list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-/&%$#@+*=_[]{}<>")


# -- tokenizers --------------------------------------------------------------------------------
def _wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = _chars()
    return specials + chars + ["##" + c for c in chars] + sorted(set(_CORPUS) - set(chars))


def _bert_tokenizer(folder: Path, *, model_max_length: int | None):
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(_wordpiece_vocab()) + "\n", encoding="utf-8")
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    import inspect

    # transformers 5 builds the WordPiece model from a ``vocab`` mapping (a ``vocab_file`` keyword
    # is ignored there, leaving only the 5 special tokens); 4.x reads ``vocab_file``
    if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, **kwargs)
    mapping = {token: i for i, token in enumerate(_wordpiece_vocab())}
    return BertTokenizerFast(vocab=mapping, do_lower_case=True, **kwargs)


def _unigram_tokenizer(specials: list[str], unk: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    pieces: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    pieces += [("\u2581" + w, -5.0) for w in sorted(set(_CORPUS))]
    pieces += [("\u2581", -8.0)] + [(c, -10.0) for c in _chars()] + [("\u2581" + c, -9.0) for c in _chars()]
    # One id per piece: a piece listed twice (here "\u2581a", a word and a character) keeps its
    # last id, so the vocabulary would count one piece fewer than the ids the model can emit and
    # a model sized by len(tokenizer) would get one embedding row too few.
    seen: set[str] = set()
    pieces = [p for p in pieces if not (p[0] in seen or seen.add(p[0]))]
    tok = Tokenizer(models.Unigram(pieces, unk_id=specials.index(unk), byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return tok


def _xlmr_tokenizer(model_max_length: int | None):
    from tokenizers import processors
    from transformers import XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = _unigram_tokenizer(specials, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **kwargs,
    )


def _deberta_tokenizer(model_max_length: int | None):
    from tokenizers import processors
    from transformers import DebertaV2TokenizerFast

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tok = _unigram_tokenizer(specials, "[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return DebertaV2TokenizerFast(
        tokenizer_object=tok,
        bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]",
        unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]", **kwargs,
    )


def _modernbert_tokenizer(model_max_length: int | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([" ".join(_CORPUS)] * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"], **kwargs,
    )


def _roberta_tokenizer(model_max_length: int | None):
    """Byte-level BPE with RoBERTa's specials (ids 0-4 as in roberta-base) and pair template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([" ".join(_CORPUS)] * 3, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return RobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **kwargs,
    )


# -- models ------------------------------------------------------------------------------------
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _config(arch: str, vocab_size: int, tokenizer, num_labels: int, initializer_range: float, extra: dict | None = None):
    """(config, architecture name); ``extra`` goes to the config's constructor, over the defaults
    below (so that derived fields, e.g. ModernBERT's per-layer attention types, follow it)."""
    import transformers as tf

    common = dict(num_labels=num_labels, initializer_range=initializer_range, **_SMALL)
    if arch == "bert":
        cls, kwargs, name = tf.BertConfig, dict(max_position_embeddings=128), "BertForSequenceClassification"
    elif arch == "electra":
        cls, kwargs, name = tf.ElectraConfig, dict(embedding_size=32, max_position_embeddings=128), "ElectraForSequenceClassification"
    elif arch in ("xlm-roberta", "roberta"):
        # RoBERTa positions start after the padding index: 130 positions hold 128 tokens.
        cls = tf.XLMRobertaConfig if arch == "xlm-roberta" else tf.RobertaConfig
        name = "XLMRobertaForSequenceClassification" if arch == "xlm-roberta" else "RobertaForSequenceClassification"
        kwargs = dict(max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2)
    elif arch == "deberta-v2":
        # DeBERTa-v3 layout (mxbai-rerank style): relative attention, no token types.
        cls, name = tf.DebertaV2Config, "DebertaV2ForSequenceClassification"
        kwargs = dict(
            max_position_embeddings=128, type_vocab_size=0, relative_attention=True,
            position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"], position_biased_input=False,
            norm_rel_ebd="layer_norm", share_att_key=True, pad_token_id=tokenizer.pad_token_id,
        )
    elif arch == "modernbert":
        cls, name = tf.ModernBertConfig, "ModernBertForSequenceClassification"
        kwargs = dict(
            max_position_embeddings=128, global_attn_every_n_layers=2, local_attention=16,
            pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")
    merged = {**common, **kwargs, **(extra or {})}
    return cls(vocab_size=vocab_size, **merged), name


def build_tiny_model(
    arch: str,
    out_dir: str | Path,
    *,
    num_labels: int = 1,
    id2label: dict[int, str] | None = None,
    activation: str | None = None,
    legacy_activation: bool = False,
    model_max_length: int | None = 512,
    initializer_range: float = 0.2,
    seed: int = 0,
    config_overrides: dict | None = None,
    config_kwargs: dict | None = None,
) -> Path:
    """Write a tiny random ``*ForSequenceClassification`` folder and return its path.

    ``config_overrides`` are set on the model config before the weights are made, e.g.
    ``{"type_vocab_size": 1}`` (BERT/ELECTRA: the tokenizer then gives the document token type 0
    too, as single-segment models' tokenizers do) or ``{"vocab_size": n}`` (an embedding table of
    ``n`` rows whatever the tokenizer holds). ``config_kwargs`` go to the config's constructor
    instead (fields other fields derive from, e.g. ModernBERT's ``global_attn_every_n_layers``).

    ``activation`` (identity/sigmoid/softmax) is stored the way sentence-transformers' CrossEncoder
    does: ``config.sentence_transformers.activation_fn`` or, with ``legacy_activation``, the older
    ``sbert_ce_default_activation_function``. ``initializer_range`` is larger than BERT's 0.02 so
    that random logits spread enough for ranking figures to mean something.
    """
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if arch in ("bert", "electra"):
        tokenizer = _bert_tokenizer(out, model_max_length=model_max_length)
    elif arch == "xlm-roberta":
        tokenizer = _xlmr_tokenizer(model_max_length)
    elif arch == "deberta-v2":
        tokenizer = _deberta_tokenizer(model_max_length)
    elif arch == "modernbert":
        tokenizer = _modernbert_tokenizer(model_max_length)
    elif arch == "roberta":
        tokenizer = _roberta_tokenizer(model_max_length)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHS}")

    config, arch_name = _config(arch, len(tokenizer), tokenizer, num_labels, initializer_range, config_kwargs)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    if arch in ("bert", "electra") and getattr(config, "type_vocab_size", 2) == 1:
        from tokenizers import processors

        cls, sep = tokenizer.cls_token, tokenizer.sep_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B {sep}",  # every token of type 0
            special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)],
        )
        # transformers 5's BertTokenizer rebuilds its [CLS] A [SEP] B:1 [SEP]:1 template when loaded,
        # whatever tokenizer.json says; the generic class keeps the file's template (as 4.x did)
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer,
            cls_token=cls, sep_token=sep, pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token,
            mask_token=tokenizer.mask_token, model_input_names=["input_ids", "token_type_ids", "attention_mask"],
            **({} if model_max_length is None else {"model_max_length": model_max_length}),
        )
    if id2label is not None:
        config.id2label = {int(k): v for k, v in id2label.items()}
        config.label2id = {v: int(k) for k, v in id2label.items()}
    config.architectures = [arch_name]
    if activation is not None:
        cls = _ACTIVATION_CLASSES[activation]
        if legacy_activation:
            config.sbert_ce_default_activation_function = cls
        else:
            config.sentence_transformers = {"activation_fn": cls, "version": "5.7.0"}
    torch.manual_seed(seed)
    model = getattr(tf, arch_name)(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_bi_encoder(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A sentence-transformers style bi-encoder: a bare BertModel plus modules.json/pooling config."""
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _bert_tokenizer(out, model_max_length=128)
    config = tf.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=128, **_SMALL)
    config.architectures = ["BertModel"]
    torch.manual_seed(seed)
    tf.BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return out


def build_decoder(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A tiny GPT-2 causal language model (a decoder, not a cross-encoder)."""
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = tf.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(seed)
    tf.GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    return out


def write_small_validation(path: str | Path, *, queries_per_topic: int = 1) -> Path:
    """A short validation file for tiny models: the first query(s) of each built-in topic with its passages.

    Tiny models read 128 tokens at most, so the built-in set's long passages add time, not coverage.
    """
    from crossrank.export.pairs import builtin_validation_path

    out = Path(path)
    rows = [json.loads(line) for line in builtin_validation_path().read_text(encoding="utf-8").splitlines() if line.strip()]
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            if "queries" in row:
                for q in row["queries"][:queries_per_topic]:
                    f.write(json.dumps({"query": q, "passages": row["passages"]}) + "\n")
    return out
