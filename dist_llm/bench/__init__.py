"""`dist-llm bench ...`: measurements that print ratios against a baseline taken in the same run."""
