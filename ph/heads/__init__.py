"""Heads: the service the adapters call (HeadRegistry in service.py, a thin facade) and
its parts: configs and the code and paths they name (sources), heads in memory (loader,
cache), their lifecycle, training coordination (runs) and jobs, stored examples,
children of a shared head, and the path and code policy."""
