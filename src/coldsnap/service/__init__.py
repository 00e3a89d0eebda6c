"""`coldsnap service` (server.py) and the `coldsnap` command's client of it (client.py),
speaking protocol.py."""
