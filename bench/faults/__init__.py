"""`python -m bench faults`: disconnect storms, 1,000 held streams, and upstream faults.

bench/README.md ("The fault report") explains every part and its target.
"""
