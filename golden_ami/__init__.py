"""Golden AMI pipeline: config -> render -> build -> verify -> approve.

The package is the library behind ``tasks.py``. Each module owns one step or one
shared concern; targets (``aws`` / ``local``) live under ``golden_ami.targets`` and
nothing above them knows which one it talks to.
"""
