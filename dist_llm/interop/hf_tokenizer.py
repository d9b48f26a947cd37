"""A Hugging Face fast tokenizer that encodes exactly like one of our sentencepiece models.

Built from the `.model` file's own pieces, not through transformers' Llama converter: that
converter assumes Llama's id layout (unk 0, bos 1, eos 2) and prepends BOS, and ours is
pad 0, unk 1, bos 2, eos 3 with no BOS added by `encode`. The pipeline mirrors sentencepiece's:

- normalizer: the model's charsmap (none for our "identity" models), optional whitespace
  cleanup, the dummy "▁" prefix at the start of the text, then spaces -> "▁";
- model: BPE whose merges are "any two pieces whose concatenation is a piece, best score
  first" (exactly sentencepiece's BPE encoding rule), or Unigram with the same scores; both
  with byte fallback;
- user-defined symbols (<mask>, <extra_id_N>, ...) are atomic added tokens matched in the
  normalized text, as sentencepiece matches them; control tokens (<s>, </s>, <pad>) are
  special tokens that are *not* matched in text (`split_special_tokens`), because
  sentencepiece encodes a literal "</s>" as characters.

Known differences, all about literal special strings in the text: a text that is exactly one
user-defined symbol gets no "▁" in front of it; with a Unigram model a literal control or byte
piece ("</s>", "<0x41>") in the text becomes that piece instead of characters.
"""

from __future__ import annotations

import re

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from dist_llm.errors import DataError

PIECE = sp_pb2.ModelProto.SentencePiece
TRAINER = sp_pb2.TrainerSpec
SPACE = "▁"  # sentencepiece's visible whitespace, U+2581


def read_sentencepiece(path: str) -> sp_pb2.ModelProto:
    """The parsed `.model` file; DataError if it is not one."""
    proto = sp_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except (OSError, ValueError) as exc:  # protobuf's DecodeError is a ValueError
        raise DataError(f"{path}: not a readable sentencepiece model ({exc})") from exc
    return proto


def bpe_merges(proto: sp_pb2.ModelProto) -> list[tuple[str, str]]:
    """Merges that reproduce sentencepiece's BPE encoding: it repeatedly joins the adjacent pair
    whose concatenation is a normal piece with the best score, so every split of a piece into two
    vocabulary pieces is a merge, ranked by the joined piece's score (ties: vocabulary order)."""
    vocab = {p.piece for p in proto.pieces}
    ranked = sorted((p for p in proto.pieces if p.type == PIECE.NORMAL), key=lambda p: -p.score)
    return [(p.piece[:k], p.piece[k:]) for p in ranked for k in range(1, len(p.piece))
            if p.piece[:k] in vocab and p.piece[k:] in vocab]


def _normalizer(proto: sp_pb2.ModelProto, user_symbols: list[str]):
    from tokenizers import Regex, normalizers

    spec = proto.normalizer_spec
    if proto.trainer_spec.treat_whitespace_as_suffix or not spec.escape_whitespaces:
        raise DataError(
            "sentencepiece models with treat_whitespace_as_suffix=true or escape_whitespaces=false cannot "
            "be exported as a Hugging Face tokenizer; export with a tokenizer trained by `dist-llm prep`"
        )
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        # Prefix the text once, at its very start. The lookahead keeps the user-defined symbols
        # themselves unprefixed: the tokenizer normalizes each added token's content with this
        # normalizer too, and must still find "<mask>" inside "...▁<mask>...".
        if user_symbols:
            whole_symbol = "|".join(re.escape(s) for s in user_symbols)
            steps.append(normalizers.Replace(Regex(rf"\A(?!\z)(?!(?:{whole_symbol})\z)"), SPACE))
        else:
            steps.append(normalizers.Replace(Regex(r"\A(?!\z)"), SPACE))
    steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def _decoder(proto: sp_pb2.ModelProto):
    from tokenizers import decoders

    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    return decoders.Sequence(steps)


def sentencepiece_to_hf(path: str, model_max_length: int):
    """A `PreTrainedTokenizerFast` whose `encode(text)` ids equal our `load_tokenizer(path).encode`
    ids (no BOS/EOS added); special tokens come from the model's own pad/unk/bos/eos pieces."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    proto = read_sentencepiece(path)
    trainer = proto.trainer_spec
    pieces = list(proto.pieces)
    if trainer.model_type == TRAINER.BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(vocab, bpe_merges(proto), unk_token=trainer.unk_piece, fuse_unk=True,
                           byte_fallback=trainer.byte_fallback)
    elif trainer.model_type == TRAINER.UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in pieces], unk_id=trainer.unk_id,
                               byte_fallback=trainer.byte_fallback)
    else:
        raise DataError(f"{path}: sentencepiece model_type {TRAINER.ModelType.Name(trainer.model_type)} "
                        "cannot be exported; only BPE and Unigram models have a Hugging Face equivalent")
    user_symbols = [p.piece for p in pieces if p.type == PIECE.USER_DEFINED]
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer(proto, user_symbols)
    tokenizer.decoder = _decoder(proto)
    tokenizer.add_tokens([AddedToken(s, normalized=True, special=False) for s in user_symbols])
    controls = [p.piece for p in pieces if p.type in (PIECE.CONTROL, PIECE.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in controls])

    def piece(index: int) -> str | None:
        return pieces[index].piece if 0 <= index < len(pieces) else None  # -1: disabled

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, split_special_tokens=True,
        bos_token=piece(trainer.bos_id), eos_token=piece(trainer.eos_id),
        pad_token=piece(trainer.pad_id), unk_token=piece(trainer.unk_id),
        add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
    )
