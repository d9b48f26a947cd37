"""A Hugging Face fast tokenizer that encodes exactly like one of our sentencepiece models.

Built from the `.model` file's own pieces, not through transformers' Llama converter: that
converter assumes Llama's id layout (unk 0, bos 1, eos 2) and prepends BOS, and ours is
pad 0, unk 1, bos 2, eos 3 with no BOS added by `encode`. The pipeline mirrors sentencepiece's:

- normalizer: the model's charsmap (none for our "identity" models), optional whitespace
  cleanup, the dummy "▁" prefix at the start of the text, then spaces -> "▁";
- model: BPE whose merges are "any two pieces whose concatenation is a piece, best score
  first" (exactly sentencepiece's BPE encoding rule), or Unigram with the same scores; both
  with byte fallback;
- user-defined symbols (<mask>, <sep>, <cls>, <extra_id_N>) are atomic, as sentencepiece
  matches them anywhere in the text: a pre-tokenizer cuts each occurrence out as a word of its
  own, which the model maps to the symbol's id (BPE with `ignore_merges`: a word that is a
  vocabulary piece is that piece; Unigram: the symbol's piece outscores any split of it);
- control tokens (<s>, </s>, <pad>) and the symbols are registered as special tokens, which are
  never matched as added tokens (`split_special_tokens`): sentencepiece encodes a literal "</s>"
  as characters, and transformers 5 marks named special tokens (mask/sep/cls) special again
  whenever it loads a tokenizer, so the symbols could not be matched that way either. Being
  special, all of them are dropped by `decode(..., skip_special_tokens=True)`.

Roles: "<mask>", "<sep>", "<cls>" become `mask_token`, `sep_token`, `cls_token` and the
"<extra_id_N>" sentinels `extra_special_tokens` (v4's `additional_special_tokens`), so
`mask_token_id`, `all_special_ids`, fill-mask and T5's sentinel handling see them.

`ignore_merges` is exact only if every piece, spelled out, merges back into itself; the export
checks that and otherwise drops `ignore_merges` (logging that literal user-defined symbols then
encode as characters). Known differences, both about literal special strings in the text: a
literal control or byte piece ("</s>", "<0x41>") becomes that piece instead of characters with a
Unigram model anywhere, and with a BPE model where it is a whole word (all the text between two
user-defined symbols, or after the last one).
"""

from __future__ import annotations

import re

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from dist_llm.errors import DataError
from dist_llm.log import get_logger

log = get_logger(__name__)

PIECE = sp_pb2.ModelProto.SentencePiece
TRAINER = sp_pb2.TrainerSpec
SPACE = "▁"  # sentencepiece's visible whitespace, U+2581
ROLES = {"<mask>": "mask_token", "<sep>": "sep_token", "<cls>": "cls_token"}
"""User-defined pieces of our tokenizers (data_prep/tokenizer.py) -> their transformers role."""
SENTINEL = re.compile(r"<extra_id_\d+>")


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
    return [
        (p.piece[:k], p.piece[k:])
        for p in ranked
        for k in range(1, len(p.piece))
        if p.piece[:k] in vocab and p.piece[k:] in vocab
    ]


def _normalizer(proto: sp_pb2.ModelProto):
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
        steps.append(normalizers.Replace(Regex(r"\A(?!\z)"), SPACE))  # once, at the very start
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
    ids (no BOS/EOS added); special tokens come from the model's own pad/unk/bos/eos pieces, and
    mask/sep/cls and the sentinels from its user-defined pieces where it has them."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    proto = read_sentencepiece(path)
    trainer = proto.trainer_spec
    pieces = list(proto.pieces)
    user_symbols = [p.piece for p in pieces if p.type == PIECE.USER_DEFINED]
    if trainer.model_type == TRAINER.BPE:
        model = _bpe_model(proto, ignore_merges=bool(user_symbols))
    elif trainer.model_type == TRAINER.UNIGRAM:
        model = models.Unigram(
            [(p.piece, p.score) for p in pieces], unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback
        )
    else:
        raise DataError(
            f"{path}: sentencepiece model_type {TRAINER.ModelType.Name(trainer.model_type)} "
            "cannot be exported; only BPE and Unigram models have a Hugging Face equivalent"
        )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = _normalizer(proto)
    if user_symbols:
        whole_symbol = "|".join(re.escape(s) for s in user_symbols)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(whole_symbol), behavior="isolated")
    tokenizer.decoder = _decoder(proto)
    # Registered (never matched: split_special_tokens) so transformers knows them as special.
    specials = (PIECE.CONTROL, PIECE.UNKNOWN, PIECE.USER_DEFINED)
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, normalized=False, special=True) for p in pieces if p.type in specials]
    )

    def piece(index: int) -> str | None:
        return pieces[index].piece if 0 <= index < len(pieces) else None  # -1: disabled

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        split_special_tokens=True,
        bos_token=piece(trainer.bos_id),
        eos_token=piece(trainer.eos_id),
        pad_token=piece(trainer.pad_id),
        unk_token=piece(trainer.unk_id),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        **{role: s for s, role in ROLES.items() if s in user_symbols},
        extra_special_tokens=[s for s in user_symbols if SENTINEL.fullmatch(s)],
    )


def _bpe_model(proto: sp_pb2.ModelProto, ignore_merges: bool):
    """tokenizers' BPE with sentencepiece's merges; `ignore_merges` (a word that is a piece encodes
    as that piece) is how user-defined symbols stay atomic, and is kept only where it changes no
    other encoding: when every normal piece, spelled out in characters, merges back into itself."""
    from tokenizers import models

    trainer = proto.trainer_spec
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}

    def build(ignore: bool) -> models.BPE:
        return models.BPE(
            vocab,
            bpe_merges(proto),
            unk_token=trainer.unk_piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
            ignore_merges=ignore,
        )

    if not ignore_merges:
        return build(False)
    plain = build(False)
    stuck = [
        p.piece
        for p in proto.pieces
        if p.type == PIECE.NORMAL and [t.value for t in plain.tokenize(p.piece)] != [p.piece]
    ]
    if stuck:
        log.warning(
            "sentencepiece BPE pieces %s do not merge back into themselves; the exported "
            "tokenizer encodes literal user-defined symbols (<mask>, ...) in text as characters",
            stuck[:5],
        )
        return plain
    return build(True)
