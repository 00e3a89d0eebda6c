"""Connections: established TCP streams saved and rebuilt with TCP_REPAIR (tcp.py), the
network lock that keeps their packets off the wire meanwhile (lock.py), and the hold of a
dump that ties both to one frozen window (hold.py). Usable by dump, restore and migration.
"""
