"""Helpers shared by the tests (and the benchmarks in bench/): nothing here is a test.

tests/conftest.py puts tests/ on sys.path, so a test imports them as `helpers.<module>`:
paths (ROOT, FIXTURES), heads (small configs, training helpers), stores (store helpers),
http (calling a `ph serve`), json_stream (jsctl output), intent_data (the offline intent
set), servers (real servers on 127.0.0.1) and jaseci_harness (the Jaseci runtime).
Importing this package imports none of them.
"""
