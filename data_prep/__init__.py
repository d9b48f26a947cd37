"""data_prep: turn raw corpora into tokenized Arrow shards plus a manifest."""
