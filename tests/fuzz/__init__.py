"""MiniVoice's own SIP fuzzer: valid requests, mutated one field at a time, sent to a live
gateway (and through the edge); see tests/fuzz/README.md."""
