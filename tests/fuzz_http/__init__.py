"""The HTTP side's fuzzer: seeded mutations of valid answer_url documents, REST requests and
media responses, run against the pure parsers and against a live gateway (see __main__)."""
