"""The Faust engine, all of it: the app (`app.py`), its agents and their engine (`engine.py`), and the
transport and stream without per-message scheduling (`transport.py`).

`faust -A agents.faust.app worker -l info` runs it, as does `ai-analytics worker --engine faust`. Nothing
here is imported by the kafka engine (agents/worker.py); both share agents/engine.py.
"""
