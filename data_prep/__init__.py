"""data_prep: turn raw corpora into tokenized Arrow shards plus a manifest.

Modules, in data-flow order:
- `default_corpus` — offline built-in corpus (stdlib docstrings + pydoc topics) as JSONL.
- `inputs` — files/dirs/globs/s3:// URIs/HF datasets -> `InputFile`s (kind, size, identity).
- `units` + `planner` — the deterministic plan of independent `WorkUnit`s (byte ranges, row groups).
- `readers` (+ `columnar` for Parquet/HF) — a unit -> `Document(text, source, offset)`;
  `ErrorPolicy` raise|skip.
- `filters` — normalization, length filters, the document hash (dedup + split rule).
- `tokenizer` — `train_sentencepiece`, `load_tokenizer` (sentencepiece .model or local HF dir);
  very long documents tokenized in pieces.
- `workers` — each unit read, filtered, tokenized and written by one pool worker; unit records
  and the unit's sorted dedup keys.
- `writer` — `list<uint16>` (or uint32) Arrow IPC shards of a unit.
- `store` — atomic writes/reads to a local dir or an object-store prefix.
- `identity` — `prep.json`: the settings a resume must match.
- `parts` — which part of a multi-machine prep this process runs.
- `dedup` — exact dedup partitioned by hash: keys files, pieces of hash space, drops per unit.
- `merge` — unit records -> corpus-wide dedup and shard rewrites, spread over parts and workers ->
  the manifest (shard table, then `manifest.json`).
- `manifest` — the manifest format (JSON header + columnar shard table), its writer and reader.
- `pipeline` — `PrepConfig` + `prepare()`; `cli` — `add_arguments` / `run` for `dist-llm prep`.

Nothing is imported here so that `data_prep.manifest` stays cheap for the training loader.
"""
